"""An exponential moving average of a network's weights (Polyak averaging): the
student a zero-shot run keeps and evaluates with --student_ema."""

from __future__ import annotations

import keras
import tensorflow as tf

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
    model of the same architecture (`model`), which can be evaluated, saved and
    checkpointed like any Keras model.

    update() moves every floating-point weight of the copy, trainable weights and
    BatchNorm statistics alike, towards the live model's:
    average <- decay * average + (1 - decay) * live (other weights are copied). It
    runs in cross-replica context: under a tf.distribute strategy every replica's
    copy receives the same value, as the live weights are the same on every replica.

    Args:
        live: the model being trained.
        copy: a freshly built model of the same architecture; its weights are
            overwritten with the live model's at once.
        decay: in [0, 1); the average's horizon is about 1 / (1 - decay) updates.
        strategy: the strategy whose scope built both models (default: current).

    Raises:
        UserError: the copy is the live model itself, or its weights differ in
            number or shape.
    """

    def __init__(
        self, live: keras.Model, copy: keras.Model, decay: float, strategy=None
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
