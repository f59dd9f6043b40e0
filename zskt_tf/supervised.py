"""The authors' SGD training loop (reference section 4), shared by teacher training and
the few-shot baselines: resumable, logged, evaluated every N steps."""

from __future__ import annotations

import dataclasses
import pathlib

import keras
import tensorflow as tf
from absl import logging

from zskt_tf import evaluation, pipelines, run_loop
from zskt_tf.errors import UserError
from zskt_tf.optimizers import TorchSGD
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


class SGDTrainer(run_loop.Trainer):
    """A supervised run on the run loop: epochs of augmented batches, one SGD step
    each; the weights are written once, at the end."""

    loss_tags = ("train/loss",)

    def __init__(
        self,
        *,
        model,
        train_images,
        train_labels,
        data,
        recipe: SGDRecipe,
        seed: int,
        total_steps: int,
        output_dir,
        weights_name: str,
        loss_fn=cross_entropy,
        mixed_precision: bool = False,
        jit: bool = False,
    ):
        self.model, self.data, self.recipe, self.seed = model, data, recipe, seed
        self.train_images, self.train_labels = train_images, train_labels
        self.total_steps, self.output_dir = total_steps, output_dir
        self.weights_name = weights_name
        self.optimizer = sgd_optimizer(recipe, model, mixed_precision)
        self.step_fn = make_train_step(
            model, self.optimizer, recipe.weight_decay, jit, loss_fn
        )
        self.predict = evaluation.make_predict_fn(model, jit)
        self.steps_per_epoch = -(-len(train_images) // recipe.batch_size)

    def checkpointables(self) -> dict:
        return dict(model=self.model, optimizer=self.optimizer)

    def batches(self, step: int, end: int):
        # Batches depend only on (seed, epoch, batch): a resumed run sees the same
        # ones. The dataset ends at the budget, so the loop runs it to its end.
        epoch, start_batch = divmod(step, self.steps_per_epoch)
        return pipelines.train_dataset(
            self.train_images,
            self.train_labels,
            self.data.info,
            self.recipe.batch_size,
            self.seed,
            epoch,
            start_batch,
            end_batch=end - epoch * self.steps_per_epoch,
        )

    def train_step(self, batch, step: int) -> dict:
        images, labels = batch
        lr = self.recipe.learning_rate(step, self.total_steps)
        loss, correct = self.step_fn(images, labels, tf.constant(lr, tf.float32))
        accuracy = tf.cast(correct, tf.float32) / tf.cast(
            tf.shape(labels)[0], tf.float32
        )
        return {"train/loss": loss, "train/accuracy": accuracy}

    def log_scalars(self, step: int) -> dict:
        return {"train/lr": self.recipe.learning_rate(step - 1, self.total_steps)}

    def evaluate(self, step: int) -> dict:
        accuracy = evaluation.accuracy(
            self.model,
            self.data.test_images,
            self.data.test_labels,
            self.data.info,
            predict_fn=self.predict,
        )
        return {
            "epoch": round(step / self.steps_per_epoch, 3),
            "test_accuracy": accuracy,
        }

    def on_evaluation(self, entry: dict, history: list[dict]) -> None:
        del history
        logging.info(
            "step %d (epoch %.2f): train loss %.4f, test accuracy %.4f",
            entry["step"],
            entry["epoch"],
            entry["loss"],
            entry["test_accuracy"],
        )

    def finish(self, history: list[dict], timing: dict) -> dict:
        path = pathlib.Path(self.output_dir) / self.weights_name
        self.model.save_weights(path)
        logging.info(
            "done: test accuracy %.4f, weights in %s",
            history[-1]["test_accuracy"],
            path,
        )
        return {
            "epochs": round(timing["steps"] / self.steps_per_epoch, 3),
            "images_per_second": round(
                self.recipe.batch_size / max(timing["seconds_per_step"], 1e-9), 1
            ),
        }


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
    trainer = SGDTrainer(
        model=model,
        train_images=train_images,
        train_labels=train_labels,
        data=data,
        recipe=recipe,
        seed=seed,
        total_steps=total_steps,
        output_dir=output_dir,
        weights_name=weights_name,
        loss_fn=loss_fn,
        mixed_precision=mixed_precision,
        jit=jit,
    )
    settings = run_loop.LoopSettings(
        output_dir=output_dir,
        total_steps=total_steps,
        eval_every=eval_every,
        log_every=log_every,
        stop_at=stop_at,
        progress_label=label,
    )
    return run_loop.run(trainer, settings, ("train/loss", "train/accuracy"))
