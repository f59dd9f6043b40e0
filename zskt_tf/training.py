"""Small helpers shared by the training loops."""

from __future__ import annotations

import contextlib

import keras

from zskt_tf.errors import UserError


def positive(name: str, value) -> None:
    """Raises a one-line UserError unless value > 0."""
    if value is None or value <= 0:
        raise UserError(f"{name} must be positive, got {value}")


@contextlib.contextmanager
def mixed_precision_scope(enabled: bool):
    """Builds models under mixed_float16 when enabled; restores the policy after.

    Models built inside keep their layers' policies; logits and the generator's output
    stay float32 (see wide_resnet and generator).
    """
    previous = keras.config.dtype_policy()
    if enabled:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
