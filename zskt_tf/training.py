"""Small helpers shared by the training loops."""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from zskt_tf.configs import positive  # noqa: F401 (re-exported)
from zskt_tf.errors import UserError


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


def check_accelerator_options(jit: bool, mixed_precision: bool, strategy=None) -> None:
    """Refuses XLA and mixed precision where they only cost: on a machine with
    neither GPU nor TPU, at the paper's batch of 128, XLA made a zero-shot iteration
    24% slower and mixed_float16 5.2 times slower (docs/RESULTS.md, "XLA and mixed
    precision").

    Raises:
        UserError: one line saying why and what to do.
    """
    strategy = strategy or tf.distribute.get_strategy()
    tpu = isinstance(strategy, tf.distribute.TPUStrategy)
    gpu = bool(tf.config.list_logical_devices("GPU"))
    if jit and not (gpu or tpu):
        raise UserError(
            "--jit (XLA) is for GPUs and TPUs: on a CPU it made the paper's "
            "batch-128 iteration 24% slower; rerun without --jit"
        )
    if mixed_precision and not gpu:
        raise UserError(
            "--mixed_precision (float16) needs a GPU: on a CPU it made an iteration "
            "5 times slower (TPUs compute in bfloat16 already); rerun without "
            "--mixed_precision"
        )
