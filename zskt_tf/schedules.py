"""Learning-rate schedules as plain functions of the run's own clock."""

from __future__ import annotations

import math
from collections.abc import Sequence


def step_decay(
    base_lr: float,
    step: int,
    total_steps: int,
    decay: float = 0.2,
    milestones: Sequence[float] = (0.3, 0.6, 0.8),
) -> float:
    """The authors' MultiStepLR: lr x decay at each milestone fraction of the run.

    The authors step at epochs 0.3, 0.6 and 0.8 x epochs (60, 120, 160 of 200). The
    boundaries are placed at the same fractions of the total number of steps, which
    is identical for 200 epochs and keeps short runs sane (at 1 epoch, whole-epoch
    milestones would all round to 0).
    """
    passed = sum(step >= round(fraction * total_steps) for fraction in milestones)
    return base_lr * decay**passed


ONE_CYCLE_WARMUP = 0.2


def one_cycle(
    peak_lr: float, step: int, total_steps: int, warmup: float = ONE_CYCLE_WARMUP
) -> float:
    """Linear warm-up to peak_lr over the first `warmup` of the run, then linear
    decay to 0 at its end: an option for very short runs (not in the paper).

    Step 0 already trains (lr = peak / warm-up steps); the last step's lr is the
    smallest positive one of the decay.
    """
    warmup_steps = max(1, round(warmup * total_steps))
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    return peak_lr * (total_steps - step) / max(1, total_steps - warmup_steps)


def cosine(base_lr: float, step, total_steps: int):
    """PyTorch CosineAnnealingLR with eta_min 0: lr at 0-based step (ZSKT Sec. 4).

    Works on Python numbers and on tensors (inside a compiled step). Tensors are
    computed in float64, as PyTorch does in Python floats: in float32, 1 + cos(.)
    near the end of an 80,000-step run is below float32's resolution of 1.
    """
    if isinstance(step, (int, float)):
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    import tensorflow as tf

    progress = tf.cast(step, tf.float64) / float(total_steps)
    return base_lr * 0.5 * (1.0 + tf.cos(math.pi * progress))
