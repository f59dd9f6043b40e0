"""The authors' SGD training loop (reference section 4), shared by teacher training and
the few-shot baselines: resumable, logged, evaluated every N steps."""

from __future__ import annotations

import dataclasses
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from zskt_tf import checkpoints, evaluation, pipelines, runs
from zskt_tf.errors import UserError
from zskt_tf.optimizers import TorchSGD
from zskt_tf.progress import Progress
from zskt_tf.schedules import cosine, one_cycle, step_decay
from zskt_tf.training import positive

LR_SCHEDULES = ("step", "cosine", "onecycle")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SGDRecipe:
    """SGD momentum 0.9, weight decay 5e-4 (PyTorch L2), lr 0.1, batch 128, lr x0.2
    at 30/60/80% of the run (section 4). "cosine" (lr to 0) and "onecycle" (linear
    warm-up to lr over 20% of the run, then linear to 0) are options for short runs."""

    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "step"
    lr_decay: float = 0.2
    lr_milestones: tuple[float, ...] = (0.3, 0.6, 0.8)

    def validate(self) -> None:
        positive("batch_size", self.batch_size)
        positive("lr", self.lr)
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserError(
                f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got "
                f"{self.lr_schedule!r}"
            )

    def learning_rate(self, step: int, total_steps: int) -> float:
        if self.lr_schedule == "cosine":
            return cosine(self.lr, step, total_steps)
        if self.lr_schedule == "onecycle":
            return one_cycle(self.lr, step, total_steps)
        return step_decay(self.lr, step, total_steps, self.lr_decay, self.lr_milestones)


def cross_entropy(images, labels, outputs):
    """Plain cross entropy on the logits (teacher training, "no teacher" baseline)."""
    del images
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=tf.cast(outputs["logits"], tf.float32)
        )
    )


def make_train_step(
    model, optimizer, weight_decay: float, jit: bool, loss_fn=cross_entropy
):
    """A compiled SGD step: (images, labels, lr) -> (loss, number correct).

    loss_fn(images, labels, outputs) gives the loss from the model's output dict.
    """
    variables = model.trainable_variables

    @tf.function(jit_compile=jit, reduce_retracing=True)
    def train_step(images, labels, learning_rate):
        optimizer.learning_rate.assign(learning_rate)
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            loss = loss_fn(images, labels, outputs)
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        # PyTorch SGD weight decay: L2 added to the gradient, on every parameter,
        # as in the authors' optimiser (section 4).
        grads = [
            g + weight_decay * tf.cast(v, g.dtype)
            for g, v in zip(grads, variables, strict=True)
        ]
        optimizer.apply(grads, variables)
        predictions = tf.argmax(outputs["logits"], -1)
        return loss, tf.reduce_sum(tf.cast(predictions == labels, tf.int32))

    return train_step


def sgd_optimizer(recipe: SGDRecipe, model, mixed_precision: bool):
    # PyTorch's momentum buffer (Keras' own SGD would keep an lr-scaled velocity that
    # lags behind every lr drop of the step schedule).
    optimizer = TorchSGD(learning_rate=recipe.lr, momentum=recipe.momentum)
    if mixed_precision:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    return optimizer


def train_supervised(
    *,
    model,
    train_images,
    train_labels,
    data,
    recipe: SGDRecipe,
    output_dir,
    seed: int,
    total_steps: int,
    eval_every: int,
    weights_name: str,
    loss_fn=cross_entropy,
    mixed_precision: bool = False,
    jit: bool = False,
    stop_at: int | None = None,
    log_every: int = 50,
    label: str = "step",
) -> dict:
    """Trains model with SGD on (train_images, train_labels), resuming if it can.

    The caller has prepared output_dir (config.json). Evaluates on data's test split
    every eval_every steps and at the end; checkpoints at each evaluation, on
    SIGINT/SIGTERM and at stop_at. Training batches depend only on (seed, epoch,
    batch), so a resumed run ends with the same weights as an uninterrupted one.

    Returns:
        The results dict also written to results.json.
    """
    output_dir = pathlib.Path(output_dir)
    optimizer = sgd_optimizer(recipe, model, mixed_precision)
    step = tf.Variable(0, dtype=tf.int64, name="global_step")
    elapsed = tf.Variable(0.0, dtype=tf.float64, name="elapsed_seconds")
    checkpoint, manager = checkpoints.checkpoint_manager(
        output_dir, model=model, optimizer=optimizer, step=step, elapsed=elapsed
    )
    checkpoints.restore_latest(checkpoint, manager)
    steps_per_epoch = -(-len(train_images) // recipe.batch_size)
    history_path = output_dir / "history.json"
    history = [
        h
        for h in (runs.read_json(history_path) if history_path.exists() else [])
        if h["step"] <= int(step)
    ]

    train_step = make_train_step(model, optimizer, recipe.weight_decay, jit, loss_fn)
    predict = evaluation.make_predict_fn(model, jit)
    writer = tf.summary.create_file_writer(str(output_dir / "logs"))
    progress = Progress(label, total_steps, start=int(step))
    session_start, train_seconds, session_images = time.perf_counter(), 0.0, 0
    start_elapsed = float(elapsed)
    loss_sum = correct_sum = seen = 0.0

    def save():
        elapsed.assign(start_elapsed + time.perf_counter() - session_start)
        manager.save(checkpoint_number=int(step))

    with checkpoints.InterruptGuard() as guard, writer.as_default():
        while int(step) < total_steps:
            epoch, start_batch = divmod(int(step), steps_per_epoch)
            batches = pipelines.train_dataset(
                train_images,
                train_labels,
                data.info,
                recipe.batch_size,
                seed,
                epoch,
                start_batch,
                # The budget can end inside an epoch; the loop runs the dataset to
                # its end rather than breaking out of it (see train_dataset).
                end_batch=total_steps - epoch * steps_per_epoch,
            )
            batch_start = time.perf_counter()
            for images, labels in batches:
                lr = recipe.learning_rate(int(step), total_steps)
                loss, correct = train_step(images, labels, tf.constant(lr, tf.float32))
                if not np.isfinite(float(loss)):
                    raise UserError(
                        f"non-finite loss at step {int(step) + 1}; the last "
                        "good checkpoint is kept. Lower --lr?"
                    )
                step.assign_add(1)
                batch = int(images.shape[0])
                loss_sum += float(loss) * batch
                correct_sum += int(correct)
                seen += batch
                session_images += batch
                now = int(step)
                if now % log_every == 0:
                    tf.summary.scalar("train/loss", loss, step=now)
                    tf.summary.scalar("train/lr", lr, step=now)
                progress.update(
                    now,
                    f"epoch {now / steps_per_epoch:.2f} loss "
                    f"{loss_sum / seen:.3f} acc {correct_sum / seen:.3f}",
                )
                stop = stop_at is not None and now >= stop_at
                if now % eval_every == 0 or now == total_steps:
                    train_seconds += time.perf_counter() - batch_start
                    accuracy = evaluation.accuracy(
                        model,
                        data.test_images,
                        data.test_labels,
                        data.info,
                        predict_fn=predict,
                    )
                    entry = {
                        "step": now,
                        "epoch": round(now / steps_per_epoch, 3),
                        "test_accuracy": accuracy,
                        "train_loss": loss_sum / seen,
                        "train_accuracy": correct_sum / seen,
                    }
                    history.append(entry)
                    tf.summary.scalar(
                        "train/accuracy", entry["train_accuracy"], step=now
                    )
                    tf.summary.scalar("test/accuracy", accuracy, step=now)
                    logging.info(
                        "step %d (epoch %.2f): train loss %.4f, test accuracy %.4f",
                        now,
                        entry["epoch"],
                        entry["train_loss"],
                        accuracy,
                    )
                    runs.write_json(history_path, history)
                    loss_sum = correct_sum = seen = 0.0
                    save()
                    batch_start = time.perf_counter()
                if (guard.requested or stop) and now < total_steps:
                    save()
                    raise checkpoints.Interrupted(f"step {now}/{total_steps}")
            train_seconds += time.perf_counter() - batch_start

    model.save_weights(output_dir / weights_name)
    results = {
        "test_accuracy": history[-1]["test_accuracy"],
        "steps": int(step),
        "epochs": round(int(step) / steps_per_epoch, 3),
        "wall_time_seconds": round(
            start_elapsed + time.perf_counter() - session_start, 1
        ),
        "images_per_second": round(session_images / max(train_seconds, 1e-9), 1),
        "history": history,
    }
    runs.write_json(output_dir / runs.RESULTS_FILE, results)
    logging.info(
        "done: test accuracy %.4f, weights in %s",
        results["test_accuracy"],
        output_dir / weights_name,
    )
    return results
