"""Zero-shot knowledge transfer: the adversarial loop of reference sections 2-3."""

from __future__ import annotations

import dataclasses
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from zskt_tf import (
    checkpoints,
    datasets,
    evaluation,
    losses,
    model_io,
    plots,
    runs,
    schedules,
)
from zskt_tf.errors import UserError
from zskt_tf.generator import generator as build_generator
from zskt_tf.optimizers import TorchAdam
from zskt_tf.progress import Progress
from zskt_tf.training import mixed_precision_scope, positive
from zskt_tf.wide_resnet import check_architecture, wide_resnet

TAPS = ("block1", "block2", "block3")
# Keys that may differ between a run and its resumption without changing the result.
RUN_CONTROL_KEYS = (
    "output_dir",
    "data_dir",
    "cache_dir",
    "stop_at",
    "eval_every",
    "checkpoint_every",
    "log_every",
    "seeds",
    "seed",
    "teacher",
)
# PyTorch's Adam epsilon (Keras defaults to 1e-7); the authors use torch defaults.
ADAM_EPSILON = 1e-8
# A window's mean generator loss above this is "near 0": the generator no longer finds
# disagreement and the adversarial game has collapsed (section 3; a healthy run of the
# authors' sits at about -0.10 to -0.12, and collapsed runs here at -0.0001 to -0.001).
COLLAPSED_GENERATOR_LOSS = -0.005
METRICS = (
    "train/generator_loss",
    "train/student_loss",
    "train/kl",
    "train/attention",
    "train/teacher_max_prob",
    "train/student_max_prob",
)


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """A zero-shot run. Defaults are the paper's (reference sections 2-3).

    dataset=None takes the teacher's dataset; it is used for evaluation only.
    eval_every=None evaluates every 1% of the run.
    """

    teacher: str
    output_dir: str
    dataset: str | None = None
    data_dir: str | None = None
    cache_dir: str | None = None
    student_depth: int = 16
    student_width: int = 1
    generator_steps: int = 1  # n_g
    student_steps: int = 10  # n_s
    batch_size: int = 128
    z_dim: int = 100
    total_iterations: int = 80_000
    # Length of the cosine schedules; None means total_iterations. A shorter run of
    # a longer schedule follows the paper's learning rates for its first iterations.
    schedule_iterations: int | None = None
    student_lr: float = 2e-3
    generator_lr: float = 1e-3
    beta: float = 250.0
    temperature: float = 1.0
    grad_clip: float = 5.0
    eval_every: int | None = None
    seed: int = 0
    mixed_precision: bool = False
    jit: bool = False
    stop_at: int | None = None
    checkpoint_every: int | None = None  # iterations; default: at every evaluation
    log_every: int = 10

    def resolved_schedule(self) -> int:
        return self.schedule_iterations or self.total_iterations

    def resolved_eval_every(self) -> int:
        return self.eval_every or max(1, self.total_iterations // 100)

    def validate(self) -> None:
        check_architecture(self.student_depth, self.student_width)
        for name in (
            "generator_steps",
            "student_steps",
            "batch_size",
            "z_dim",
            "total_iterations",
            "student_lr",
            "generator_lr",
            "temperature",
            "grad_clip",
        ):
            positive(name, getattr(self, name))
        if self.beta < 0:
            raise UserError(f"beta must be >= 0, got {self.beta}")
        if self.eval_every is not None:
            positive("eval_every", self.eval_every)
        if self.schedule_iterations is not None and (
            self.schedule_iterations < self.total_iterations
        ):
            raise UserError(
                f"schedule_iterations ({self.schedule_iterations}) must be at least "
                f"total_iterations ({self.total_iterations})"
            )
        if self.batch_size < 2:
            raise UserError(
                "batch_size must be at least 2 (BatchNorm batch statistics)"
            )


def check_attention_compatible(teacher: keras.Model, student: keras.Model) -> None:
    """Attention transfer needs the same taps with equal spatial sizes (section 2)."""
    teacher_taps = {k: v.shape[1:3] for k, v in teacher.output.items() if k in TAPS}
    student_taps = {k: v.shape[1:3] for k, v in student.output.items() if k in TAPS}
    if teacher_taps.keys() != student_taps.keys() or any(
        tuple(teacher_taps[k]) != tuple(student_taps[k]) for k in teacher_taps
    ):
        raise UserError(
            f"attention transfer needs matching taps: teacher {teacher_taps}, student "
            f"{student_taps}; use a student of the teacher's family or --beta=0"
        )


def make_iteration_fn(
    teacher,
    student,
    generator,
    student_optimizer,
    generator_optimizer,
    config: DistillConfig,
):
    """The compiled outer iteration: n_g generator steps, then n_s student steps.

    Returns a function (z, iteration) -> dict of scalar metrics.
    """
    student_vars = student.trainable_variables
    generator_vars = generator.trainable_variables
    temperature, beta = config.temperature, config.beta

    def taps(outputs):
        return [outputs[name] for name in TAPS]

    def mean_max_prob(logits):
        return tf.reduce_mean(
            tf.reduce_max(tf.nn.softmax(losses.at_least_float32(logits)), -1)
        )

    def generator_step(z):
        with tf.GradientTape() as tape:
            pseudo = generator(z, training=True)
            # The teacher is frozen and in inference mode but inside the tape, so the
            # gradient reaches the generator through it (the earlier port's .predict()
            # cut this path). The student is in training mode (authors' code).
            teacher_out = teacher(pseudo, training=False)
            student_out = student(pseudo, training=True)
            loss = losses.generator_loss(
                student_out["logits"], teacher_out["logits"], temperature
            )
            scaled = generator_optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, generator_vars)
        generator_optimizer.apply(grads, generator_vars)
        return loss, teacher_out["logits"], student_out["logits"]

    def student_step(pseudo, teacher_logits, teacher_taps):
        with tf.GradientTape() as tape:
            student_out = student(pseudo, training=True)
            kl = losses.kl_divergence(
                teacher_logits, student_out["logits"], temperature
            )
            attention = (
                losses.total_attention_loss(taps(student_out), teacher_taps)
                if beta
                else tf.zeros([], kl.dtype)
            )
            loss = kl + beta * attention
            scaled = student_optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, student_vars)
        student_optimizer.apply(grads, student_vars)
        return loss, kl, attention

    @tf.function(jit_compile=config.jit)
    def iteration_fn(z, iteration):
        # Both learning rates follow cosine annealing to 0 over the whole run, stepped
        # once per outer iteration (section 3), from the checkpointed clock.
        for optimizer, base_lr in (
            (student_optimizer, config.student_lr),
            (generator_optimizer, config.generator_lr),
        ):
            lr = schedules.cosine(base_lr, iteration, config.resolved_schedule())
            optimizer.learning_rate.assign(tf.cast(lr, optimizer.learning_rate.dtype))
        for _ in range(config.generator_steps):  # n_g is 1 in the paper: unrolled
            generator_loss, teacher_logits, student_logits = generator_step(z)
        # The student trains on the *updated* generator's images for the same z, as
        # the authors' loop does. They re-run the generator for every student step;
        # its output cannot change between those steps, so it is computed once here,
        # and so are the teacher's logits and taps (no gradient needed from either).
        pseudo = tf.stop_gradient(generator(z, training=True))
        teacher_out = teacher(pseudo, training=False)
        teacher_student_logits = tf.stop_gradient(teacher_out["logits"])
        teacher_taps = [tf.stop_gradient(t) for t in taps(teacher_out)]
        student_loss = kl = attention = tf.zeros([], generator_loss.dtype)
        # tf.range keeps this a loop in the graph rather than n_s unrolled copies.
        for _ in tf.range(config.student_steps):
            student_loss, kl, attention = student_step(
                pseudo, teacher_student_logits, teacher_taps
            )
        return {
            "train/generator_loss": generator_loss,
            "train/student_loss": student_loss,
            "train/kl": kl,
            "train/attention": attention,
            "train/teacher_max_prob": mean_max_prob(teacher_logits),
            "train/student_max_prob": mean_max_prob(student_logits),
        }

    return iteration_fn


def _adam(learning_rate: float, grad_clip: float, mixed_precision: bool):
    # global_clipnorm clips after loss-scale unscaling, so the same code is right in
    # float32 and mixed precision (clip by global norm 5, section 3).
    optimizer = TorchAdam(
        learning_rate=learning_rate, epsilon=ADAM_EPSILON, global_clipnorm=grad_clip
    )
    if mixed_precision:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def check_inputs(
    config: DistillConfig, data: datasets.ImageData | None = None
) -> tuple[dict, datasets.ImageData, keras.Model]:
    """Checks everything a run needs before anything is written.

    Returns:
        (the teacher's record, the evaluation data (loaded if not given), the frozen
        teacher, built under the run's precision policy).

    Raises:
        UserError: bad configuration, a missing or misfitting teacher, a student
            whose taps cannot match, or a dataset that does not fit the teacher.
    """
    config.validate()
    record = model_io.teacher_record(config.teacher)
    teacher_info = datasets.DatasetInfo.from_json(record["dataset_info"])
    dataset = config.dataset or record["dataset"]
    if data is None:
        data = datasets.load_dataset(dataset, config.data_dir, config.cache_dir)
    if data.info.num_classes != teacher_info.num_classes:
        raise UserError(
            f"dataset {dataset} has {data.info.num_classes} classes but the teacher "
            f"predicts {teacher_info.num_classes}; evaluate on the teacher's dataset "
            f"({record['dataset']})"
        )
    if tuple(data.info.image_shape) != tuple(teacher_info.image_shape):
        raise UserError(
            f"dataset {dataset} has images {data.info.image_shape} but the teacher "
            f"takes {teacher_info.image_shape}"
        )
    with mixed_precision_scope(config.mixed_precision):
        teacher = model_io.load_teacher(config.teacher)  # weights must fit the config
    if config.beta:
        student = wide_resnet(
            config.student_depth,
            config.student_width,
            teacher_info.num_classes,
            teacher_info.image_shape,
        )
        check_attention_compatible(teacher, student)
    return record, data, teacher


def distill_one_seed(
    config: DistillConfig, data: datasets.ImageData | None = None
) -> dict:
    """Runs (or resumes) one zero-shot run in config.output_dir.

    Returns:
        The results dict also written to results.json.

    Raises:
        UserError: bad configuration or teacher, before any training.
        checkpoints.Interrupted: SIGINT/SIGTERM or stop_at; a checkpoint was saved.
    """
    return _distill_one_seed(config, *check_inputs(config, data))


def _distill_one_seed(
    config: DistillConfig, record: dict, data: datasets.ImageData, teacher
) -> dict:
    """distill_one_seed on inputs check_inputs has already checked and loaded."""
    teacher_info = datasets.DatasetInfo.from_json(record["dataset_info"])
    dataset = config.dataset or record["dataset"]
    info = teacher_info  # normalisation the teacher was trained with
    output_dir = pathlib.Path(config.output_dir)

    # The seed alone fixes the initial student and generator (the teacher is loaded
    # already, so it draws nothing from the seeded generators).
    keras.utils.set_random_seed(config.seed)
    with mixed_precision_scope(config.mixed_precision):
        student = wide_resnet(
            config.student_depth,
            config.student_width,
            info.num_classes,
            info.image_shape,
            name="student",
        )
        generator = build_generator(config.z_dim, info.image_shape)
    student_optimizer = _adam(
        config.student_lr, config.grad_clip, config.mixed_precision
    )
    generator_optimizer = _adam(
        config.generator_lr, config.grad_clip, config.mixed_precision
    )
    student_optimizer.build(student.trainable_variables)
    generator_optimizer.build(generator.trainable_variables)

    runs.prepare_output_dir(
        output_dir,
        dataclasses.asdict(config)
        | {
            "kind": "zero_shot_student",
            "dataset": dataset,
            "teacher_architecture": [record["depth"], record["width"]],
            "dataset_info": info.to_json(),
            "num_classes": info.num_classes,
            "input_shape": list(info.image_shape),
            "depth": config.student_depth,
            "width": config.student_width,
        },
        ignore=RUN_CONTROL_KEYS,
    )
    iteration = tf.Variable(0, dtype=tf.int64, name="iteration")
    elapsed = tf.Variable(0.0, dtype=tf.float64, name="elapsed_seconds")
    noise = tf.random.Generator.from_seed(config.seed)
    # Running means for TensorBoard (since the last log) and for the history (since
    # the last evaluation); checkpointed so that a resumed run logs the same values.
    metrics = {tag: keras.metrics.Mean(name=tag) for tag in METRICS}
    window = {tag: keras.metrics.Mean(name=tag) for tag in METRICS}
    checkpoint, manager = checkpoints.checkpoint_manager(
        output_dir,
        student=student,
        generator=generator,
        student_optimizer=student_optimizer,
        generator_optimizer=generator_optimizer,
        iteration=iteration,
        elapsed=elapsed,
        noise=noise,
        # Keras 3 metrics are not trackable themselves; their variables are.
        log_metrics=[v for m in metrics.values() for v in m.variables],
        eval_metrics=[v for m in window.values() for v in m.variables],
    )
    checkpoints.restore_latest(checkpoint, manager)

    predict = evaluation.make_predict_fn(student)

    def test_accuracy(model=student, fn=predict):
        return evaluation.accuracy(
            model, data.test_images, data.test_labels, info, predict_fn=fn
        )

    teacher_accuracy = test_accuracy(teacher, evaluation.make_predict_fn(teacher))
    logging.info(
        "teacher WRN-%d-%d: test accuracy %.4f here, %s recorded",
        record["depth"],
        record["width"],
        teacher_accuracy,
        record.get("recorded_accuracy"),
    )

    history_path = output_dir / "history.json"
    history = [
        h
        for h in (runs.read_json(history_path) if history_path.exists() else [])
        if h["iteration"] <= int(iteration)
    ]
    if not history:
        history.append({"iteration": 0, "test_accuracy": test_accuracy()})
        logging.info(
            "student before training: test accuracy %.4f", history[0]["test_accuracy"]
        )
        runs.write_json(history_path, history)  # a resumed run must not re-measure it

    iteration_fn = make_iteration_fn(
        teacher, student, generator, student_optimizer, generator_optimizer, config
    )
    eval_every = config.resolved_eval_every()
    checkpoint_every = config.checkpoint_every or eval_every
    writer = tf.summary.create_file_writer(str(output_dir / "logs"))
    total = config.total_iterations
    progress = Progress("iteration", total, start=int(iteration))
    start_elapsed, session_start = float(elapsed), time.perf_counter()
    session_start_iteration = int(iteration)
    sample_z = tf.random.Generator.from_seed(10_000 + config.seed).normal(
        [64, config.z_dim]
    )

    def save():
        elapsed.assign(start_elapsed + time.perf_counter() - session_start)
        manager.save(checkpoint_number=int(iteration))

    def pseudo_samples():
        images = generator(sample_z, training=True).numpy()
        return plots.to_display(images, info.mean, info.std)

    def write_outputs():
        """The student and generator as they are now, and the PNGs: at the end, and
        at every stop, so that a run worked in chunks can be used between them."""
        student.save_weights(output_dir / model_io.STUDENT_WEIGHTS)
        generator.save_weights(output_dir / model_io.GENERATOR_WEIGHTS)
        plots.save_image_grid(pseudo_samples(), output_dir / "samples.png")
        plots.save_curves(
            history,
            output_dir / "accuracy.png",
            f"zero-shot WRN-{config.student_depth}-{config.student_width} "
            f"from WRN-{record['depth']}-{record['width']}",
            teacher_accuracy,
        )

    def stop_here():
        save()
        write_outputs()
        raise checkpoints.Interrupted(f"iteration {int(iteration)}/{total}")

    with checkpoints.InterruptGuard() as guard, writer.as_default():
        while int(iteration) < total:
            if config.stop_at is not None and int(iteration) >= config.stop_at:
                stop_here()  # already there (a rerun with the same --stop_at)
            z = noise.normal([config.batch_size, config.z_dim])
            values = iteration_fn(z, iteration.read_value())
            losses_now = [
                float(values["train/generator_loss"]),
                float(values["train/student_loss"]),
            ]
            if not np.all(np.isfinite(losses_now)):
                raise UserError(
                    f"non-finite loss at iteration {int(iteration) + 1} "
                    f"(generator {losses_now[0]}, student {losses_now[1]}); the last "
                    f"good checkpoint ({manager.latest_checkpoint}) is kept. Try a "
                    "lower --student_lr/--generator_lr or drop --mixed_precision"
                )
            iteration.assign_add(1)
            step = int(iteration)
            for tag, value in values.items():
                metrics[tag].update_state(value)
                window[tag].update_state(value)
            if step % config.log_every == 0 or step == total:
                for tag, metric in metrics.items():
                    tf.summary.scalar(tag, metric.result(), step=step)
                    metric.reset_state()
                tf.summary.scalar(
                    "train/student_lr",
                    schedules.cosine(
                        config.student_lr, step - 1, config.resolved_schedule()
                    ),
                    step=step,
                )
                tf.summary.scalar(
                    "train/generator_lr",
                    schedules.cosine(
                        config.generator_lr, step - 1, config.resolved_schedule()
                    ),
                    step=step,
                )
            progress.update(
                step, f"gen loss {losses_now[0]:.4f} student loss {losses_now[1]:.4f}"
            )
            if step % eval_every == 0 or step == total:
                entry = {"iteration": step, "test_accuracy": test_accuracy()}
                for tag, metric in window.items():
                    entry[tag.split("/", 1)[1]] = float(metric.result())
                    metric.reset_state()
                history.append(entry)
                tf.summary.scalar("test/accuracy", entry["test_accuracy"], step=step)
                tf.summary.image(
                    "pseudo_images", pseudo_samples()[:16], step=step, max_outputs=16
                )
                logging.info(
                    "iteration %d: test accuracy %.4f | generator loss %.4f | max prob "
                    "teacher %.3f student %.3f",
                    step,
                    entry["test_accuracy"],
                    entry["generator_loss"],
                    entry["teacher_max_prob"],
                    entry["student_max_prob"],
                )
                if entry.get("generator_loss", -1.0) > COLLAPSED_GENERATOR_LOSS:
                    logging.warning(
                        "generator loss %.4f is near 0: the adversarial game has "
                        "collapsed (teacher max prob %.3f); it may recover, else try "
                        "another --seeds value or a stronger teacher",
                        entry["generator_loss"],
                        entry["teacher_max_prob"],
                    )
                runs.write_json(history_path, history)
            stop = config.stop_at is not None and step >= config.stop_at
            if (guard.requested or stop) and step < total:
                stop_here()
            if step % checkpoint_every == 0:
                save()

    save()
    write_outputs()
    session_seconds = time.perf_counter() - session_start
    session_iterations = int(iteration) - session_start_iteration
    results = {
        "test_accuracy": history[-1]["test_accuracy"],
        "teacher_test_accuracy": teacher_accuracy,
        "teacher_recorded_accuracy": record.get("recorded_accuracy"),
        "iterations": int(iteration),
        "wall_time_seconds": round(start_elapsed + session_seconds, 1),
        "seconds_per_iteration": round(session_seconds / max(session_iterations, 1), 4),
        "evaluations": history,
    }
    runs.write_json(output_dir / runs.RESULTS_FILE, results)
    logging.info(
        "done: student test accuracy %.4f (teacher %.4f); outputs in %s",
        results["test_accuracy"],
        teacher_accuracy,
        output_dir,
    )
    return results


def distill(config: DistillConfig, seeds: tuple[int, ...] = (0,)) -> dict:
    """Runs one zero-shot run per seed in output_dir/seed_<s>, then summarises.

    The paper reports the final accuracy as mean +- population std over seeds 0, 1, 2
    (section 3). Rerunning the same call resumes whichever seed was interrupted.

    Returns:
        {"seeds": {...}, "test_accuracy_mean": ..., "test_accuracy_std": ...}, also
        written to output_dir/results.json.
    """
    if not seeds:
        raise UserError("give at least one seed")
    record, data, teacher = check_inputs(config)  # before output_dir is created
    output_dir = pathlib.Path(config.output_dir)
    summary_config = dataclasses.asdict(config) | {
        "seeds": list(seeds),
        "kind": "zero_shot_seeds",
    }
    runs.prepare_output_dir(output_dir, summary_config, ignore=RUN_CONTROL_KEYS)
    per_seed = {}
    for seed in seeds:
        seed_config = dataclasses.replace(
            config, seed=seed, output_dir=str(output_dir / f"seed_{seed}")
        )
        done = output_dir / f"seed_{seed}" / runs.RESULTS_FILE
        if done.is_file():
            per_seed[seed] = runs.read_json(done)
            continue
        per_seed[seed] = _distill_one_seed(seed_config, record, data, teacher)
    finals = np.array([per_seed[s]["test_accuracy"] for s in seeds])
    summary = {
        "seeds": {str(s): per_seed[s]["test_accuracy"] for s in seeds},
        "test_accuracy_mean": float(finals.mean()),
        "test_accuracy_std": float(finals.std()),  # population std, as the paper
        "teacher_test_accuracy": per_seed[seeds[0]]["teacher_test_accuracy"],
    }
    runs.write_json(output_dir / runs.RESULTS_FILE, summary)
    return summary
