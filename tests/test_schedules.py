"""The learning-rate schedules, step by step."""

import math

import pytest

from zskt_tf import supervised
from zskt_tf.errors import UserError
from zskt_tf.schedules import cosine, one_cycle, step_decay


def test_step_decay_at_the_papers_fractions():
    # 200 epochs of 10 steps: the authors' decays at epochs 60, 120 and 160.
    lrs = {s: step_decay(0.1, s, 2000) for s in (0, 599, 600, 1199, 1200, 1600, 1999)}
    assert lrs[0] == lrs[599] == 0.1
    assert lrs[600] == pytest.approx(0.02) and lrs[1199] == pytest.approx(0.02)
    assert lrs[1200] == pytest.approx(0.004)
    assert lrs[1600] == lrs[1999] == pytest.approx(0.0008)


def test_cosine_starts_at_lr_and_halves_midway():
    assert cosine(0.1, 0, 100) == pytest.approx(0.1)
    assert cosine(0.1, 50, 100) == pytest.approx(0.05)
    assert cosine(0.1, 99, 100) == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.99)))


def test_one_cycle_warms_up_linearly_then_decays_to_zero():
    lrs = [one_cycle(0.2, s, 100) for s in range(100)]
    # Warm-up over the first 20 steps: 0.01, 0.02, ..., 0.2; step 0 already trains.
    assert lrs[:20] == pytest.approx([0.2 * (s + 1) / 20 for s in range(20)])
    assert max(lrs) == pytest.approx(0.2) and lrs.index(max(lrs)) == 19
    # Then linear to 0 at the end of the run.
    assert lrs[20] == pytest.approx(0.2)
    assert lrs[60] == pytest.approx(0.1)
    assert lrs[99] == pytest.approx(0.2 / 80)
    assert all(a >= b for a, b in zip(lrs[19:], lrs[20:], strict=False))
    # A one-step run still trains at the peak.
    assert one_cycle(0.2, 0, 1) == pytest.approx(0.2)


def test_recipe_dispatches_and_rejects_unknown_schedules():
    recipe = supervised.SGDRecipe(lr=0.2, lr_schedule="onecycle")
    recipe.validate()
    assert recipe.learning_rate(19, 100) == pytest.approx(0.2)
    assert supervised.SGDRecipe().learning_rate(0, 100) == pytest.approx(0.1)
    with pytest.raises(UserError, match="lr_schedule must be one of step, cosine"):
        supervised.SGDRecipe(lr_schedule="linear").validate()
