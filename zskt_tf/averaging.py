"""An exponential moving average of a network's weights (Polyak averaging): the
student a zero-shot run keeps and evaluates with --student_ema, its BatchNorm
statistics measured anew for the averaged weights."""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from zskt_tf import networks
from zskt_tf.errors import UserError


def check_copy(live: keras.Model, copy: keras.Model) -> None:
    """Raises UserError unless copy is a second model with live's weight shapes."""
    if copy is live:
        raise UserError(
            "--student_ema needs a second student of the same architecture, but "
            "the student's builder returned the same model twice: make it build "
            "a new model on every call"
        )
    shapes = [tuple(w.shape) for w in live.weights]
    if shapes != [tuple(w.shape) for w in copy.weights]:
        raise UserError(
            f"--student_ema: the student's builder gave {copy.name} with weights "
            f"unlike {live.name}'s; make it build the same architecture every call"
        )


class WeightAverage:
    """The exponential moving average of a live model's weights, held in a second
    model of the same architecture (`model`), which is checkpointed like any Keras
    model; `kept()` gives the model to evaluate, save and return.

    update() moves every floating-point weight of the copy, trainable weights and
    BatchNorm statistics alike, towards the live model's:
    average <- decay * average + (1 - decay) * live (other weights are copied). It
    runs in cross-replica context: under a tf.distribute strategy every replica's
    copy receives the same value, as the live weights are the same on every replica.

    Averaged BatchNorm statistics do not fit averaged weights (they were measured on
    other weights' activations), which can leave the average near chance while the
    live student is far from it. So with BatchNorm layers a third model, given as
    `refreshed`, holds the average with its statistics measured anew: its weights are
    the average's, its BatchNorm statistics the mean of the batch statistics on
    batches the caller runs through it in training mode (as SWA does before
    evaluation). The average itself, which is what resumes, is never changed by it.

    Args:
        live: the model being trained.
        copy: a freshly built model of the same architecture; its weights are
            overwritten with the live model's at once.
        decay: in [0, 1); the average's horizon is about 1 / (1 - decay) updates.
        strategy: the strategy whose scope built the models (default: current).
        refreshed: another fresh model of the architecture, used when it has
            BatchNorm layers (ignored without them).

    Raises:
        UserError: a copy is the live model itself, or its weights differ in
            number or shape.
    """

    def __init__(
        self,
        live: keras.Model,
        copy: keras.Model,
        decay: float,
        strategy=None,
        refreshed: keras.Model | None = None,
    ):
        check_copy(live, copy)
        self.model, self.decay = copy, float(decay)
        self.strategy = strategy or tf.distribute.get_strategy()
        self._pairs = [
            (average, weight, tf.as_dtype(weight.dtype).is_floating)
            for average, weight in zip(copy.weights, live.weights, strict=True)
        ]
        self._step = tf.function(self._move)
        with self.strategy.scope():
            self._step(0.0)  # decay 0: the copy starts as the live weights
        self.refreshed = None
        self._norms = (
            list(networks.batch_norm_layers(refreshed).values())
            if refreshed is not None
            else []
        )
        if self._norms:
            check_copy(copy, refreshed)
            self.refreshed = refreshed
            self._start = tf.function(self._start_refresh)
            self._end = tf.function(self._end_refresh)
        self._current = False  # the refreshed model is the present average's

    def _move(self, decay: float):
        for average, weight, floating in self._pairs:
            if floating:
                average.assign(decay * average.value + (1.0 - decay) * weight.value)
            else:
                average.assign(weight.value)

    def update(self) -> None:
        """One step of the average towards the live weights."""
        with self.strategy.scope():
            self._step(self.decay)
        self._current = False

    def _start_refresh(self):
        for target, average in zip(
            self.refreshed.weights, self.model.weights, strict=True
        ):
            target.assign(average.value)
        for layer in self._norms:
            layer.moving_mean.assign(tf.zeros_like(layer.moving_mean))
            layer.moving_variance.assign(tf.zeros_like(layer.moving_variance))

    def _end_refresh(self, batches: int):
        # From 0, n updates x <- m x + (1 - m) b leave (1 - m^n) x the weighted mean
        # of the n batch statistics.
        for layer in self._norms:
            scale = 1.0 / (1.0 - float(layer.momentum) ** batches)
            layer.moving_mean.assign(layer.moving_mean * scale)
            layer.moving_variance.assign(layer.moving_variance * scale)

    @property
    def holder(self) -> keras.Model:
        """The model that kept() returns: the refreshed copy with BatchNorm, else
        the average itself."""
        return self.model if self.refreshed is None else self.refreshed

    def kept(self, run_batches: Callable[[keras.Model], int]) -> keras.Model:
        """The model to evaluate, save and return: the average, or with BatchNorm
        the refreshed copy of it, measured anew if the average moved since.

        Args:
            run_batches: runs the given model in training mode on the batches its
                statistics are measured on and returns how many (at least 1).
        """
        if self.refreshed is not None and not self._current:
            with self.strategy.scope():
                self._start()
            batches = run_batches(self.refreshed)
            with self.strategy.scope():
                self._end(batches)
            self._current = True
        return self.holder
