"""Zero-shot distillation runs: configuration, input checks, the trainer that plays
the adversarial game (zskt_tf.adversarial) on the shared run loop, several seeds."""

from __future__ import annotations

import dataclasses
import pathlib

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from zskt_tf import (
    adversarial,
    checkpoints,
    datasets,
    distribution,
    evaluation,
    model_io,
    plots,
    replay,
    run_loop,
    runs,
    schedules,
)
from zskt_tf.configs import DistillConfig
from zskt_tf.errors import UserError
from zskt_tf.generator import generator as build_generator
from zskt_tf.training import (
    check_accelerator_options,
    mixed_precision_scope,
)
from zskt_tf.wide_resnet import check_taps_match, wide_resnet

# Keys that may differ between a run and its resumption without changing the result.
RUN_CONTROL_KEYS = (
    "output_dir",
    "data_dir",
    "cache_dir",
    "stop_at",
    "eval_every",
    "checkpoint_every",
    "log_every",
    "teacher",
    "restart",
)
# The multi-seed summary directory records the run of every seed; a seed's own
# directory is one seed's run, so there the seed must match.
SUMMARY_CONTROL_KEYS = (*RUN_CONTROL_KEYS, "seeds", "seed")
# A window's mean KL(teacher || student) on the generator's batches below this is
# "near 0": the generator no longer finds disagreement and the adversarial game has
# collapsed. In the paper's method the generator loss is exactly -KL (section 3: a
# healthy run of the authors' sits at -0.10 to -0.12, collapsed runs here at -0.0001
# to -0.001); with other objectives the KL still measures the disagreement.
COLLAPSED_KL = 0.005


def collapsed(entry: dict) -> bool:
    """Whether a history entry's window shows a collapsed game."""
    return entry.get("generator_kl", 1.0) < COLLAPSED_KL


def check_inputs(
    config: DistillConfig, data: datasets.ImageData | None = None, strategy=None
) -> tuple[dict, datasets.ImageData, keras.Model]:
    """Checks everything a run needs before anything is written.

    Returns:
        (the teacher's record, the evaluation data (loaded if not given), the frozen
        teacher, built under the run's precision policy in the strategy's scope).

    Raises:
        UserError: bad configuration, a missing or misfitting teacher, a student
            whose taps cannot match, or a dataset that does not fit the teacher.
    """
    config.validate()
    strategy = strategy or tf.distribute.get_strategy()
    check_accelerator_options(config.jit, config.mixed_precision, strategy)
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
    with strategy.scope(), mixed_precision_scope(config.mixed_precision):
        teacher = model_io.load_teacher(config.teacher)  # weights must fit the config
    if config.beta:
        student = wide_resnet(
            config.student_depth,
            config.student_width,
            teacher_info.num_classes,
            teacher_info.image_shape,
        )
        check_taps_match(teacher, student)
    return record, data, teacher


class EarlyCollapseCheck:
    """Tells a collapse-prone start at iteration 40, long before the first
    evaluation of a full run (iteration 800).

    In their first ~20 iterations the generator drives the teacher to near-certainty
    on one class on every seed and teacher tried; a game that is still near 0 over
    iterations 21-40 stays there (docs/RESULTS.md, "Why the game collapses").
    """

    WINDOW = (20, 40)  # iterations 21-40

    def __init__(self):
        self.values = []  # (KL on the generator's batch, teacher max prob)

    def update(self, iteration: int, values: dict) -> str | None:
        """Records the metrics of 1-based `iteration`; at the window's end, returns
        the warning if the window looks collapsed."""
        first, last = self.WINDOW
        if not first < iteration <= last:
            return None
        self.values.append(
            (
                float(values["train/generator_kl"]),
                float(values["train/teacher_max_prob"]),
            )
        )
        if iteration < last or len(self.values) < last - first:
            return None  # a run resumed inside the window skips the check
        kl, teacher_max_prob = np.mean(self.values, axis=0)
        if kl >= COLLAPSED_KL:
            return None
        return (
            f"early check, iterations {first + 1}-{last}: KL(teacher || student) "
            f"{kl:.4f} and teacher max prob {teacher_max_prob:.3f} on the pseudo "
            "images: the adversarial game has collapsed (the generator finds no "
            "images on which the student disagrees with this teacher). This "
            "teacher looks collapse-prone; the game may still recover, but if the "
            "evaluations stay near 0, rerun with --bn_prior=1 or "
            "--adversarial_loss=l1 (README, 'Beyond the paper'), or use a teacher "
            "trained longer or with --label_smoothing=0.1."
        )


class ZeroShotTrainer(run_loop.Trainer):
    """A zero-shot run on the run loop: the student and generator, their optimisers,
    the checkpointed noise, the compiled iteration and the run's pictures."""

    loss_tags = ("train/generator_loss", "train/student_loss")

    def __init__(
        self, config: DistillConfig, record: dict, data, teacher, strategy=None
    ):
        self.config, self.record, self.data = config, record, data
        self.strategy = strategy or tf.distribute.get_strategy()
        self.chief = distribution.is_chief(self.strategy)
        self.info = datasets.DatasetInfo.from_json(record["dataset_info"])
        self.output_dir = pathlib.Path(config.output_dir)
        self._build_networks()
        # Noise for the global batch, on the host: the same z whatever the replicas.
        self.noise = tf.random.Generator.from_seed(config.seed)
        self.sample_z = tf.random.Generator.from_seed(10_000 + config.seed).normal(
            [64, config.z_dim], dtype=self.generator.inputs[0].dtype
        )
        game_args = (
            teacher,
            self.student,
            self.generator,
            self.student_optimizer,
            self.generator_optimizer,
            config,
            self.strategy,
        )
        self.pool = None
        if config.replay_size:
            self.pool = replay.ReplayPool(
                config.replay_size, self.info.image_shape, self.strategy
            )
            self.pool.log_memory()
            self.game = replay.ReplayGame(*game_args, pool=self.pool, seed=config.seed)
        else:
            self.game = adversarial.AdversarialGame(*game_args)
        self.iteration_fn = self.game.iteration
        self.student_accuracy, teacher_accuracy = (
            evaluation.Accuracy(
                model,
                data.test_images,
                data.test_labels,
                self.info,
                strategy=self.strategy,
            )
            for model in (self.student, teacher)
        )
        self.teacher_accuracy = teacher_accuracy()
        self.early_check = EarlyCollapseCheck()
        logging.info(
            "teacher WRN-%d-%d: test accuracy %.4f here, %s recorded",
            record["depth"],
            record["width"],
            self.teacher_accuracy,
            record.get("recorded_accuracy"),
        )

    def _build_networks(self) -> None:
        """The student, the generator and their optimisers, in the strategy's scope;
        BatchNorm synchronized over replicas when there are several."""
        config = self.config
        # The seed alone fixes the initial student and generator (the teacher is
        # loaded already, so it draws nothing from the seeded generators).
        keras.utils.set_random_seed(config.seed)
        synchronized = distribution.replicas(self.strategy) > 1
        with self.strategy.scope(), mixed_precision_scope(config.mixed_precision):
            self.student = wide_resnet(
                config.student_depth,
                config.student_width,
                self.info.num_classes,
                self.info.image_shape,
                name="student",
                synchronized=synchronized,
            )
            # A class-conditional generator also takes a one-hot class.
            inputs = config.z_dim + self.info.num_classes * bool(config.class_prior)
            self.generator = build_generator(
                inputs, self.info.image_shape, synchronized=synchronized
            )
            self.student_optimizer = adversarial.student_optimizer(config)
            self.generator_optimizer = adversarial.adam(
                config.generator_lr, config.grad_clip, config.mixed_precision
            )
            self.student_optimizer.build(self.student.trainable_variables)
            self.generator_optimizer.build(self.generator.trainable_variables)

    def checkpointables(self) -> dict:
        return dict(
            student=self.student,
            generator=self.generator,
            student_optimizer=self.student_optimizer,
            generator_optimizer=self.generator_optimizer,
            noise=self.noise,
            **(self.pool.checkpointables() if self.pool else {}),
        )

    def batches(self, step: int, end: int):
        # Drawn lazily, so the checkpointed noise state matches the steps taken.
        for _ in range(end - step):
            yield self.noise.normal(
                [self.config.batch_size, self.config.z_dim],
                dtype=self.generator.inputs[0].dtype,
            )

    def train_step(self, batch, step: int) -> dict:
        values = self.iteration_fn(batch, tf.constant(step, tf.int64))
        warning = self.early_check.update(step + 1, values)
        if warning:
            logging.warning(warning)
        return values

    def evaluate(self, step: int) -> dict:
        del step
        return {"test_accuracy": self.student_accuracy()}

    def log_scalars(self, step: int) -> dict:
        schedule = self.config.resolved_schedule()
        return {
            "train/student_lr": schedules.cosine(
                self.config.student_lr, step - 1, schedule
            ),
            "train/generator_lr": schedules.cosine(
                self.config.generator_lr, step - 1, schedule
            ),
        }

    def on_evaluation(self, entry: dict, history: list[dict]) -> None:
        if "generator_loss" not in entry:  # the untrained student
            logging.info(
                "student before training: test accuracy %.4f", entry["test_accuracy"]
            )
            return
        step = entry["iteration"]
        tf.summary.image(
            "pseudo_images", self.pseudo_samples()[:16], step=step, max_outputs=16
        )
        logging.info(
            "iteration %d: test accuracy %.4f | generator loss %.4f, KL %.4f | max "
            "prob teacher %.3f student %.3f",
            step,
            entry["test_accuracy"],
            entry["generator_loss"],
            entry["generator_kl"],
            entry["teacher_max_prob"],
            entry["student_max_prob"],
        )
        if collapsed(entry):
            logging.warning(
                "KL(teacher || student) %.4f on the generator's batches is near 0: "
                "the adversarial game has collapsed (teacher max prob %.3f); it may "
                "recover, else see the early check's advice",
                entry["generator_kl"],
                entry["teacher_max_prob"],
            )

    def pseudo_samples(self):
        """The generator's images for the fixed sample noise, as in training (batch
        statistics, split over the replicas like a training batch)."""
        images = distribution.run_on_global_batch(
            self.strategy,
            lambda z: self.generator(z, training=True),
            self.game.generator_input(self.sample_z),
        )
        return plots.to_display(np.asarray(images), self.info.mean, self.info.std)

    def write_outputs(self, history: list[dict]) -> None:
        """The student and generator as they are now, and the PNGs: at the end, and
        at every stop, so that a run worked in chunks can be used between them."""
        samples = self.pseudo_samples()  # collective: every process takes part
        if not self.chief:
            return
        model_io.save_weights(self.student, self.output_dir / model_io.STUDENT_WEIGHTS)
        model_io.save_weights(
            self.generator, self.output_dir / model_io.GENERATOR_WEIGHTS
        )
        plots.save_image_grid(samples, self.output_dir / "samples.png")
        plots.save_curves(
            history,
            self.output_dir / "accuracy.png",
            f"zero-shot WRN-{self.config.student_depth}-{self.config.student_width} "
            f"from WRN-{self.record['depth']}-{self.record['width']}",
            self.teacher_accuracy,
        )

    def on_stop(self, history: list[dict]) -> None:
        self.write_outputs(history)

    def finish(self, history: list[dict], timing: dict) -> dict:
        del timing
        self.write_outputs(history)
        logging.info(
            "done: student test accuracy %.4f (teacher %.4f); outputs in %s",
            history[-1]["test_accuracy"],
            self.teacher_accuracy,
            self.output_dir,
        )
        return {
            "teacher_test_accuracy": self.teacher_accuracy,
            "teacher_recorded_accuracy": self.record.get("recorded_accuracy"),
        }


def distill_one_seed(
    config: DistillConfig, data: datasets.ImageData | None = None, strategy=None
) -> dict:
    """Runs (or resumes) one zero-shot run in config.output_dir.

    Args:
        config: the run.
        data: the evaluation data, if already loaded.
        strategy: a tf.distribute strategy (e.g. a TPUStrategy from a notebook);
            default: the current context's.

    Returns:
        The results dict also written to results.json.

    Raises:
        UserError: bad configuration or teacher, before any training.
        checkpoints.Interrupted: SIGINT/SIGTERM or stop_at; a checkpoint was saved.
    """
    strategy = strategy or tf.distribute.get_strategy()
    inputs = check_inputs(config, data, strategy)
    return _distill_one_seed(config, *inputs, strategy)


def _seed_record(config: DistillConfig, record: dict) -> dict:
    """The config.json of one seed's run directory."""
    info = datasets.DatasetInfo.from_json(record["dataset_info"])
    return dataclasses.asdict(config) | {
        "kind": "zero_shot_student",
        "dataset": config.dataset or record["dataset"],
        "teacher_architecture": [record["depth"], record["width"]],
        "dataset_info": info.to_json(),
        "num_classes": info.num_classes,
        "input_shape": list(info.image_shape),
        "depth": config.student_depth,
        "width": config.student_width,
    }


def _distill_one_seed(
    config: DistillConfig, record: dict, data: datasets.ImageData, teacher, strategy
) -> dict:
    """distill_one_seed on inputs check_inputs has already checked and loaded."""
    with runs.open_run(
        config.output_dir,
        _seed_record(config, record),
        ignore=RUN_CONTROL_KEYS,
        defaults=runs.field_defaults(config),
        write=distribution.is_chief(strategy),
    ):
        trainer = ZeroShotTrainer(config, record, data, teacher, strategy)
        settings = run_loop.LoopSettings(
            output_dir=config.output_dir,
            total_steps=config.total_iterations,
            eval_every=config.resolved_eval_every(),
            checkpoint_every=config.checkpoint_every,
            log_every=config.log_every,
            stop_at=config.stop_at,
            step_name="iteration",
            progress_label="iteration",
            evaluate_at_start=True,
            restart=config.restart,
        )
        return run_loop.run(trainer, settings, config.metric_tags(), strategy)


def _finished_seed(config: DistillConfig, record: dict) -> dict | None:
    """The results of a seed whose run is complete, or None. Both of its records
    are checked, so a damaged one is reported rather than trusted."""
    directory = pathlib.Path(config.output_dir)
    results = directory / runs.RESULTS_FILE
    if not results.is_file():
        return None
    runs.prepare_output_dir(
        directory,
        _seed_record(config, record),
        ignore=RUN_CONTROL_KEYS,
        defaults=runs.field_defaults(config),
        write=False,
    )
    return runs.read_json(
        results,
        fix="delete it and rerun the same command: the run rewrites it from its "
        "last checkpoint",
    )


def distill(
    config: DistillConfig, seeds: tuple[int, ...] = (0,), strategy=None
) -> dict:
    """Runs one zero-shot run per seed in output_dir/seed_<s>, then summarises.

    The paper reports the final accuracy as mean +- population std over seeds 0, 1, 2
    (section 3). Rerunning the same call resumes whichever seed was interrupted.
    With config.stop_at, every seed runs to stop_at before the call stops.
    strategy: a tf.distribute strategy (default: the current context's).

    Returns:
        {"seeds": {...}, "test_accuracy_mean": ..., "test_accuracy_std": ...}, also
        written to output_dir/results.json.

    Raises:
        checkpoints.StoppedAt: the seeds not finished reached stop_at (checkpoints
            saved); checkpoints.Interrupted: SIGINT/SIGTERM stopped the current seed.
    """
    if not seeds:
        raise UserError("give at least one seed")
    strategy = strategy or tf.distribute.get_strategy()
    chief = distribution.is_chief(strategy)
    # Everything is checked before output_dir is created.
    record, data, teacher = check_inputs(config, strategy=strategy)
    output_dir = pathlib.Path(config.output_dir)
    summary_config = dataclasses.asdict(config) | {
        "seeds": list(seeds),
        "kind": "zero_shot_seeds",
    }
    runs.prepare_output_dir(
        output_dir,
        summary_config,
        ignore=SUMMARY_CONTROL_KEYS,
        write=chief,
        defaults=runs.field_defaults(config),
    )
    per_seed, stopped = {}, []
    for seed in seeds:
        seed_config = dataclasses.replace(
            config, seed=seed, output_dir=str(output_dir / f"seed_{seed}")
        )
        finished = _finished_seed(seed_config, record)
        if finished is not None:
            per_seed[seed] = finished
            continue
        try:
            per_seed[seed] = _distill_one_seed(
                seed_config, record, data, teacher, strategy
            )
        except checkpoints.StoppedAt:
            stopped.append(seed)  # stop_at holds for every seed: on to the next one
    if stopped:
        raise checkpoints.StoppedAt(
            f"iteration {config.stop_at}/{config.total_iterations} "
            f"(seed{'s' if len(stopped) > 1 else ''} "
            f"{', '.join(map(str, stopped))})"
        )
    finals = np.array([per_seed[s]["test_accuracy"] for s in seeds])
    summary = {
        "seeds": {str(s): per_seed[s]["test_accuracy"] for s in seeds},
        "test_accuracy_mean": float(finals.mean()),
        "test_accuracy_std": float(finals.std()),  # population std, as the paper
        "teacher_test_accuracy": per_seed[seeds[0]]["teacher_test_accuracy"],
    }
    if chief:
        runs.write_json(output_dir / runs.RESULTS_FILE, summary)
    return summary
