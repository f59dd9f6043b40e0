"""The authors' SGD training loop (their code's teacher recipe), shared by teacher
training and the few-shot baselines: resumable, logged, evaluated every N steps."""

from __future__ import annotations

import pathlib

import keras
import tensorflow as tf
from absl import logging

from zskt_tf import (
    distribution,
    evaluation,
    losses,
    model_io,
    pipelines,
    run_loop,
)
from zskt_tf.configs import LR_SCHEDULES, SGDRecipe  # noqa: F401 (re-exported)
from zskt_tf.optimizers import TorchSGD


def cross_entropy(images, labels, outputs):
    """Plain cross entropy on the logits (teacher training, "no teacher" baseline)."""
    del images
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=losses.at_least_float32(outputs["logits"])
        )
    )


def smoothed_cross_entropy(label_smoothing: float):
    """loss_fn: cross entropy against (1 - s) one-hot + s / classes (Szegedy et al.,
    2016); s = 0 is plain cross entropy. Not in the paper: an option for teachers
    whose confidence the zero-shot game should not saturate (docs/RESULTS.md)."""
    if not label_smoothing:
        return cross_entropy

    def loss_fn(images, labels, outputs):
        del images
        logits = losses.at_least_float32(outputs["logits"])
        classes = logits.shape[-1]
        targets = tf.one_hot(labels, classes, dtype=logits.dtype)
        targets = targets * (1.0 - label_smoothing) + label_smoothing / classes
        return tf.reduce_mean(
            tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)
        )

    return loss_fn


def make_train_step(model, optimizer, jit: bool, loss_fn=cross_entropy, strategy=None):
    """A compiled SGD step: (images, labels, lr) -> (loss, accuracy) of the batch.

    loss_fn(images, labels, outputs) gives the loss from the model's output dict, a
    mean over the batch. Under a tf.distribute strategy, images and labels are a
    distributed batch and both results are the global batch's; the model and the
    optimizer must have been built in the strategy's scope.
    """
    strategy = strategy or tf.distribute.get_strategy()
    variables = model.trainable_variables

    def replica_step(images, labels):
        share = distribution.replica_share(tf.shape(labels)[0])
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            loss = loss_fn(images, labels, outputs)
            loss *= tf.cast(share, loss.dtype)  # this replica's part of the mean
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        # Weight decay is the optimizer's (PyTorch's L2 on the summed gradient).
        optimizer.apply(grads, variables)
        hits = tf.cast(tf.argmax(outputs["logits"], -1) == labels, tf.float32)
        return loss, tf.reduce_mean(hits) * share

    @tf.function(jit_compile=jit, reduce_retracing=True)
    def train_step(images, labels, learning_rate):
        optimizer.learning_rate.assign(learning_rate)
        per_replica = strategy.run(replica_step, args=(images, labels))
        return distribution.global_sum(per_replica, strategy)

    return train_step


def sgd_optimizer(recipe: SGDRecipe, model, mixed_precision: bool):
    """The authors' SGD: PyTorch's momentum buffer (Keras' own SGD would keep an
    lr-scaled velocity that lags behind every lr drop of the step schedule) and
    PyTorch's weight decay, L2 added to the gradient of every parameter.
    Build it in the strategy's scope when distributing."""
    optimizer = TorchSGD(
        learning_rate=recipe.lr,
        momentum=recipe.momentum,
        torch_weight_decay=recipe.weight_decay,
    )
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
        strategy=None,
    ):
        self.model, self.data, self.recipe, self.seed = model, data, recipe, seed
        self.train_images, self.train_labels = train_images, train_labels
        self.total_steps, self.output_dir = total_steps, output_dir
        self.weights_name = weights_name
        self.strategy = strategy or tf.distribute.get_strategy()
        with self.strategy.scope():
            self.optimizer = sgd_optimizer(recipe, model, mixed_precision)
        self.step_fn = make_train_step(model, self.optimizer, jit, loss_fn, strategy)
        self.accuracy = evaluation.Accuracy(
            model,
            data.test_images,
            data.test_labels,
            data.info,
            jit=jit,
            strategy=self.strategy,
        )
        self.steps_per_epoch = -(-len(train_images) // recipe.batch_size)

    def checkpointables(self) -> dict:
        # A networks.TappedNetwork wraps the Keras model that holds the variables.
        return dict(
            model=getattr(self.model, "model", self.model), optimizer=self.optimizer
        )

    def batches(self, step: int, end: int):
        # Batches depend only on (seed, epoch, batch): a resumed run sees the same
        # ones. The dataset ends at the budget, so the loop runs it to its end.
        # Each global batch is split over the replicas when there are several.
        epoch, start_batch = divmod(step, self.steps_per_epoch)
        dataset = pipelines.train_dataset(
            self.train_images,
            self.train_labels,
            self.data.info,
            self.recipe.batch_size,
            self.seed,
            epoch,
            start_batch,
            end_batch=end - epoch * self.steps_per_epoch,
        )
        if distribution.replicas(self.strategy) > 1:
            dataset = self.strategy.experimental_distribute_dataset(dataset)
        return dataset

    def train_step(self, batch, step: int) -> dict:
        images, labels = batch
        lr = self.recipe.learning_rate(step, self.total_steps)
        loss, accuracy = self.step_fn(images, labels, tf.constant(lr, tf.float32))
        return {"train/loss": loss, "train/accuracy": accuracy}

    def log_scalars(self, step: int) -> dict:
        return {"train/lr": self.recipe.learning_rate(step - 1, self.total_steps)}

    def evaluate(self, step: int) -> dict:
        return {
            "epoch": round(step / self.steps_per_epoch, 3),
            "test_accuracy": self.accuracy(),
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
        if distribution.is_chief(self.strategy):
            path = model_io.save_network(self.model, self.output_dir, self.weights_name)
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
    strategy=None,
    restart: bool = False,
) -> dict:
    """Trains model with SGD on (train_images, train_labels), resuming if it can.

    The caller has prepared output_dir (config.json) and holds its lock
    (zskt_tf.runs.open_run). restart: start from step 0 when checkpoints exist
    but none reads back (zskt_tf.checkpoints.resume). Evaluates on data's test split
    every eval_every steps and at the end; checkpoints at each evaluation, on
    SIGINT/SIGTERM and at stop_at. Training batches depend only on (seed, epoch,
    batch), so a resumed run ends with the same weights as an uninterrupted one.
    Under a tf.distribute strategy (the model built in its scope) the global batch
    is split over the replicas.

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
        strategy=strategy,
    )
    settings = run_loop.LoopSettings(
        output_dir=output_dir,
        total_steps=total_steps,
        eval_every=eval_every,
        log_every=log_every,
        stop_at=stop_at,
        progress_label=label,
        restart=restart,
    )
    return run_loop.run(
        trainer, settings, ("train/loss", "train/accuracy"), trainer.strategy
    )
