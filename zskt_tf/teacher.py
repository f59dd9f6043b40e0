"""Teacher training with the authors' recipe (reference section 4), resumable."""

from __future__ import annotations

import dataclasses
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from zskt_tf import checkpoints, datasets, evaluation, model_io, pipelines, runs
from zskt_tf.errors import UserError
from zskt_tf.progress import Progress
from zskt_tf.schedules import cosine, step_decay
from zskt_tf.training import mixed_precision_scope, positive
from zskt_tf.wide_resnet import check_architecture, wide_resnet

# Keys of the config that may change between a run and its resumption.
RUN_CONTROL_KEYS = ("output_dir", "data_dir", "cache_dir", "stop_at", "log_every")


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """Everything that defines a teacher run. Defaults are the authors' (section 4).

    epochs=None means 200 for CIFAR and 100 for SVHN (and other sets).
    lr_schedule is "step" (the paper's x decay at milestones) or "cosine" (per
    iteration, for short runs).
    """

    output_dir: str
    dataset: str = "cifar10"
    data_dir: str | None = None
    cache_dir: str | None = None
    depth: int = 40
    width: int = 2
    epochs: int | None = None
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "step"
    lr_decay: float = 0.2
    lr_milestones: tuple[float, ...] = (0.3, 0.6, 0.8)
    seed: int = 0
    mixed_precision: bool = False
    jit: bool = False
    stop_at: int | None = None  # stop after this many training steps (Colab chunks)
    log_every: int = 50  # steps between TensorBoard scalars

    def resolved_epochs(self) -> int:
        if self.epochs is not None:
            return self.epochs
        return 200 if self.dataset.startswith("cifar") else 100

    def validate(self) -> None:
        check_architecture(self.depth, self.width)
        positive("batch_size", self.batch_size)
        positive("epochs", self.resolved_epochs())
        positive("lr", self.lr)
        if self.lr_schedule not in ("step", "cosine"):
            raise UserError(
                f"lr_schedule must be step or cosine, got {self.lr_schedule!r}"
            )
        if self.dataset != datasets.FOLDER:
            datasets.get_info(self.dataset)


def make_train_step(model, optimizer, weight_decay: float, jit: bool):
    variables = model.trainable_variables

    @tf.function(jit_compile=jit, reduce_retracing=True)
    def train_step(images, labels, learning_rate):
        optimizer.learning_rate.assign(learning_rate)
        with tf.GradientTape() as tape:
            logits = model(images, training=True)["logits"]
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=labels, logits=logits
                )
            )
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        # PyTorch SGD weight decay: L2 added to the gradient, on every parameter,
        # as in the authors' optimiser (section 4).
        grads = [
            g + weight_decay * tf.cast(v, g.dtype) for g, v in zip(grads, variables)
        ]
        optimizer.apply(grads, variables)
        correct = tf.reduce_sum(tf.cast(tf.argmax(logits, -1) == labels, tf.int32))
        return loss, correct

    return train_step


def train_teacher(
    config: TeacherConfig, data: datasets.ImageData | None = None
) -> dict:
    """Trains (or resumes) a teacher and writes its run directory.

    Args:
        config: the run's configuration.
        data: the dataset already in memory; loaded from config otherwise.

    Returns:
        The results dict also written to results.json.

    Raises:
        UserError: bad configuration, or an output_dir holding another run.
        checkpoints.Interrupted: SIGINT/SIGTERM or stop_at; a checkpoint was saved.
    """
    config.validate()
    epochs = config.resolved_epochs()
    data = data or datasets.load_dataset(
        config.dataset, config.data_dir, config.cache_dir
    )
    output_dir = pathlib.Path(config.output_dir)
    record = dataclasses.asdict(config) | {
        "kind": "teacher",
        "epochs": epochs,
        "num_classes": data.info.num_classes,
        "input_shape": list(data.info.image_shape),
        "dataset_info": data.info.to_json(),
    }
    runs.prepare_output_dir(output_dir, record, ignore=RUN_CONTROL_KEYS)
    keras.utils.set_random_seed(config.seed)

    with mixed_precision_scope(config.mixed_precision):
        model = wide_resnet(
            config.depth, config.width, data.info.num_classes, data.info.image_shape
        )
        optimizer = keras.optimizers.SGD(
            learning_rate=config.lr, momentum=config.momentum
        )
        # Keras 3's SGD keeps lr-scaled velocity, PyTorch scales the buffer by the
        # current lr; they agree except for a short transient after each lr drop.
        if config.mixed_precision:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64, name="global_step")
    elapsed = tf.Variable(0.0, dtype=tf.float64, name="elapsed_seconds")
    checkpoint, manager = checkpoints.checkpoint_manager(
        output_dir, model=model, optimizer=optimizer, step=step, elapsed=elapsed
    )
    checkpoints.restore_latest(checkpoint, manager)

    steps_per_epoch = -(-len(data.train_images) // config.batch_size)
    total_steps = epochs * steps_per_epoch
    history_path = output_dir / "history.json"
    history = [
        h
        for h in (runs.read_json(history_path) if history_path.exists() else [])
        if h["epoch"] * steps_per_epoch <= int(step)
    ]

    def learning_rate(global_step: int) -> float:
        if config.lr_schedule == "cosine":
            return cosine(config.lr, global_step, total_steps)
        return step_decay(
            config.lr, global_step, total_steps, config.lr_decay, config.lr_milestones
        )

    train_step = make_train_step(model, optimizer, config.weight_decay, config.jit)
    predict = evaluation.make_predict_fn(model, config.jit)
    writer = tf.summary.create_file_writer(str(output_dir / "logs"))
    progress = Progress("teacher step", total_steps, start=int(step))
    session_start, session_images = time.perf_counter(), 0
    start_elapsed = float(elapsed)

    def save():
        elapsed.assign(start_elapsed + time.perf_counter() - session_start)
        manager.save(checkpoint_number=int(step))

    with checkpoints.InterruptGuard() as guard, writer.as_default():
        while int(step) < total_steps:
            epoch, start_batch = divmod(int(step), steps_per_epoch)
            loss_sum, correct_sum, seen = 0.0, 0, 0
            batches = pipelines.train_dataset(
                data.train_images, data.train_labels, data.info, config.batch_size,
                config.seed, epoch, start_batch,
            )  # fmt: skip
            for images, labels in batches:
                lr = learning_rate(int(step))
                loss, correct = train_step(images, labels, tf.constant(lr, tf.float32))
                step.assign_add(1)
                batch = int(images.shape[0])
                loss_sum, correct_sum, seen = (
                    loss_sum + float(loss) * batch,
                    correct_sum + int(correct),
                    seen + batch,
                )
                session_images += batch
                if int(step) % config.log_every == 0:
                    tf.summary.scalar("train/loss", loss, step=int(step))
                    tf.summary.scalar("train/lr", lr, step=int(step))
                progress.update(
                    int(step),
                    f"epoch {epoch + 1}/{epochs} loss "
                    f"{loss_sum / seen:.3f} acc {correct_sum / seen:.3f}",
                )
                if not np.isfinite(float(loss)):
                    raise UserError(
                        f"non-finite loss at step {int(step)}; the last "
                        "good checkpoint is kept. Lower --lr?"
                    )
                stop = config.stop_at is not None and int(step) >= config.stop_at
                if guard.requested or stop:
                    save()
                    raise checkpoints.Interrupted(f"step {int(step)}/{total_steps}")
            test_accuracy = evaluation.accuracy(
                model, data.test_images, data.test_labels, data.info, predict_fn=predict
            )
            tf.summary.scalar(
                "train/accuracy", correct_sum / max(seen, 1), step=int(step)
            )
            tf.summary.scalar("test/accuracy", test_accuracy, step=int(step))
            logging.info(
                "epoch %d/%d: train loss %.4f, test accuracy %.4f",
                epoch + 1,
                epochs,
                loss_sum / max(seen, 1),
                test_accuracy,
            )
            history.append(
                {
                    "epoch": epoch + 1,
                    "test_accuracy": test_accuracy,
                    "train_loss": loss_sum / max(seen, 1),
                }
            )
            runs.write_json(history_path, history)
            save()

    model.save_weights(output_dir / model_io.TEACHER_WEIGHTS)
    wall = start_elapsed + time.perf_counter() - session_start
    final_accuracy = (
        history[-1]["test_accuracy"]
        if history
        else evaluation.accuracy(
            model, data.test_images, data.test_labels, data.info, predict_fn=predict
        )
    )
    results = {
        "test_accuracy": final_accuracy,
        "epochs": epochs,
        "steps": int(step),
        "wall_time_seconds": round(wall, 1),
        "images_per_second": round(
            session_images / max(time.perf_counter() - session_start, 1e-9), 1
        ),
        "history": history,
    }
    runs.write_json(output_dir / runs.RESULTS_FILE, results)
    logging.info(
        "teacher done: test accuracy %.4f, weights in %s",
        final_accuracy,
        output_dir / model_io.TEACHER_WEIGHTS,
    )
    return results
