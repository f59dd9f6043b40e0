"""Parity of the zero-shot loop with the authors' PyTorch loop, from identical weights.

Both sides start from the same teacher, student and generator weights and see the
same noise. They run in float64: there the two loops agree to ~1e-12, so any change
of the method (an update order, a loss scale, Adam's epsilon) shows. In float32 the
two drift apart by ~1% within three iterations, because Adam's normalised first
steps amplify rounding differences; docs/RESULTS.md measures that drift
(bench/parity_drift.py).
"""

import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from zskt_tf import adversarial, distill, torch_import
from zskt_tf.generator import generator as build_generator

torch = pytest.importorskip("torch")
from tests import torch_reference  # noqa: E402  (needs torch)

AUTHORS_TEACHER = (
    pathlib.Path(__file__).resolve().parents[2]
    / "shared"
    / "teachers"
    / "authors-cifar10-wrn-16-1.pth.tar"
)


def keras_wrn(torch_net, depth, width, trainable):
    """The zskt_tf WRN holding a TorchWRN's weights (through the import's key map)."""
    state = {
        key: value.detach().numpy()
        for key, value in torch_net.state_dict().items()
        if not key.endswith("num_batches_tracked")
    }
    model = torch_import.convert(state, depth, width)
    model.trainable = trainable
    return model


def run_both(torch_teacher, teacher_arch, student_arch, batch_size, iterations):
    """Losses of `iterations` outer iterations of zskt_tf and of the reference.

    Returns:
        (ours, theirs): arrays of (generator loss, last student loss) per iteration.
    """
    torch.manual_seed(0)
    torch_student = torch_reference.TorchWRN(*student_arch)
    torch_generator = torch_reference.TorchGenerator(100, 32, 3)
    teacher = keras_wrn(torch_teacher, *teacher_arch, trainable=False)
    student = keras_wrn(torch_student, *student_arch, trainable=True)
    generator = build_generator(100, (32, 32, 3))
    torch_reference.copy_generator_to_keras(torch_generator, generator)
    config = distill.DistillConfig(teacher="", output_dir="", batch_size=batch_size)
    optimizers = [
        adversarial.adam(lr, config.grad_clip, False)
        for lr in (config.student_lr, config.generator_lr)
    ]
    optimizers[0].build(student.trainable_variables)
    optimizers[1].build(generator.trainable_variables)
    iteration_fn = adversarial.make_iteration_fn(
        teacher, student, generator, *optimizers, config
    )
    solver = torch_reference.AuthorsSolver(
        torch_teacher,
        torch_student,
        torch_generator,
        schedule_iterations=config.resolved_schedule(),
    )
    rng = np.random.default_rng(0)
    ours, theirs = [], []
    for iteration in range(iterations):
        z = rng.standard_normal((batch_size, 100)).astype(keras.config.floatx())
        values = iteration_fn(tf.constant(z), tf.constant(iteration, tf.int64))
        ours.append(
            [float(values[f"train/{name}_loss"]) for name in ("generator", "student")]
        )
        theirs.append(solver.iteration(torch.from_numpy(z)))
    return np.array(ours), np.array(theirs)


def assert_parity(ours, theirs):
    # The bounds: the first generator loss (a forward pass from identical
    # weights) within 1e-5, every loss within 1e-3 ...
    np.testing.assert_allclose(ours[0, 0], theirs[0, 0], rtol=1e-5)
    np.testing.assert_allclose(ours, theirs, rtol=1e-3)
    # ... and, in float64, far tighter: Keras' own Adam epsilon placement alone
    # moves the first student loss by 7e-4, which 1e-3 would let through.
    np.testing.assert_allclose(ours, theirs, rtol=1e-7)


def test_three_iterations_match_the_authors_loop():
    with torch_reference.float64():
        teacher = torch_reference.randomised_wrn(10, 2, seed=1)
        with torch.no_grad():  # a confident teacher, as a trained one is
            teacher.fc.weight.mul_(8.0)
        ours, theirs = run_both(teacher, (10, 2), (10, 1), 16, iterations=3)
    assert_parity(ours, theirs)
    # A real game: the generator finds disagreement and the student reduces it.
    assert np.all(ours[:, 0] < -0.01) and ours[-1, 1] < ours[0, 1]


@pytest.mark.skipif(
    not AUTHORS_TEACHER.is_file(), reason="the authors' teacher is not on this machine"
)
def test_three_iterations_match_from_the_authors_teacher():
    state = torch_import.read_state_dict(AUTHORS_TEACHER, trust=True)
    with torch_reference.float64():
        teacher = torch_reference.TorchWRN(16, 1)
        missing, unexpected = teacher.load_state_dict(
            {k: torch.from_numpy(v) for k, v in state.items()}, strict=False
        )
        assert not unexpected
        assert all(key.endswith("num_batches_tracked") for key in missing)
        ours, theirs = run_both(teacher.eval(), (16, 1), (16, 1), 16, iterations=3)
    assert_parity(ours, theirs)
