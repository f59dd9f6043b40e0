"""TorchAdam and TorchSGD against torch.optim, step by step, with lr changes."""

import keras
import numpy as np
import pytest

from zskt_tf.optimizers import TorchAdam, TorchSGD

torch = pytest.importorskip("torch")
from tests.torch_reference import float64  # noqa: E402


@pytest.fixture(autouse=True)
def _in_float64():
    # Learning rates and variables in float64, so the comparison is exact.
    with float64():
        yield


def _run(keras_optimizer, torch_optimizer_fn, learning_rates, clip=None):
    """Applies the same gradients (spanning nine decades, as real ones do) to one
    variable through both optimisers; returns the two trajectories."""
    rng = np.random.default_rng(0)
    start = rng.standard_normal(64)
    variable = keras.Variable(start.copy(), dtype="float64")
    keras_optimizer.build([variable])
    parameter = torch.tensor(start.copy(), requires_grad=True)
    torch_optimizer = torch_optimizer_fn([parameter])
    ours, theirs = [], []
    for lr in learning_rates:
        gradient = rng.standard_normal(64) * 10.0 ** rng.uniform(-9, 1, 64)
        keras_optimizer.learning_rate.assign(lr)
        keras_optimizer.apply([keras.ops.convert_to_tensor(gradient)], [variable])
        for group in torch_optimizer.param_groups:
            group["lr"] = lr
        parameter.grad = torch.tensor(gradient.copy())
        if clip:
            torch.nn.utils.clip_grad_norm_([parameter], clip)
        torch_optimizer.step()
        ours.append(variable.numpy().copy())
        theirs.append(parameter.detach().numpy().copy())
    return np.array(ours), np.array(theirs)


def test_torch_adam_matches_torch_optim_adam():
    learning_rates = [2e-3, 2e-3, 1.5e-3, 1e-3, 5e-4, 1e-4]
    for clip in (None, 5.0):
        ours, theirs = _run(
            TorchAdam(learning_rate=2e-3, epsilon=1e-8, global_clipnorm=clip),
            lambda params: torch.optim.Adam(params, lr=2e-3),
            learning_rates,
            clip,
        )
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-13)
    # Keras' own Adam differs by far more: its epsilon is applied after the bias
    # correction (the first step of a 1e-8 gradient is half as long in PyTorch).
    keras_adam, torch_adam = _run(
        keras.optimizers.Adam(learning_rate=2e-3, epsilon=1e-8),
        lambda params: torch.optim.Adam(params, lr=2e-3),
        learning_rates,
    )
    assert np.abs(keras_adam - torch_adam).max() > 1e-4


def test_torch_sgd_matches_torch_optim_sgd_across_lr_drops():
    learning_rates = [0.1] * 3 + [0.02] * 3 + [0.004] * 2
    for decay in (0.0, 5e-4):  # PyTorch's weight decay: L2 added to the gradient
        ours, theirs = _run(
            TorchSGD(learning_rate=0.1, momentum=0.9, torch_weight_decay=decay),
            lambda params, decay=decay: torch.optim.SGD(
                params, lr=0.1, momentum=0.9, weight_decay=decay
            ),
            learning_rates,
        )
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    # Keras' SGD keeps an lr-scaled velocity: equal while the lr is constant (up
    # to its float32 rounding of the momentum), then after the drop it still moves
    # with the old learning rate's momentum.
    keras_sgd, torch_sgd = _run(
        keras.optimizers.SGD(learning_rate=0.1, momentum=0.9),
        lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
        learning_rates,
    )
    assert np.abs(keras_sgd[:3] - torch_sgd[:3]).max() < 1e-6
    assert np.abs(keras_sgd[3:] - torch_sgd[3:]).max() > 1e-3


def test_unsupported_options_are_refused():
    with pytest.raises(ValueError, match="amsgrad"):
        TorchAdam(amsgrad=True)
    with pytest.raises(ValueError, match="nesterov"):
        TorchSGD(momentum=0.9, nesterov=True)
    with pytest.raises(ValueError, match="torch_weight_decay"):
        TorchSGD(momentum=0.9, weight_decay=5e-4)
