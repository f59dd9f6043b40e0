"""Zero-shot distillation: faithfulness of the loop, outputs, exact resume, errors."""

import dataclasses
import json
import shutil

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import run_program, tiny_teacher, weights_arrays, write_tiny_folder
from zskt_tf import checkpoints, datasets, distill, model_io
from zskt_tf.errors import UserError
from zskt_tf.generator import generator as build_generator
from zskt_tf.wide_resnet import wide_resnet


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_teacher(tmp_path_factory.mktemp("distill"))


def _config(tiny, out, **overrides):
    _, _, teacher_dir = tiny
    values = (
        dict(
            teacher=str(teacher_dir),
            output_dir=str(out),
            dataset="folder",
            student_depth=10,
            student_width=1,
            batch_size=8,
            z_dim=16,
            total_iterations=6,
            student_steps=2,
            eval_every=3,
        )
        | overrides
    )
    return distill.DistillConfig(**values)


def _networks(teacher_dir):
    """The frozen tiny teacher, a WRN-10-1 student, a generator and built optimisers."""
    frozen = model_io.load_teacher(teacher_dir)
    student = wide_resnet(10, 1, 3, (16, 16, 3))
    gen = build_generator(16, (16, 16, 3))
    optimizers = [distill._adam(lr, 5.0, False) for lr in (2e-3, 1e-3)]
    optimizers[0].build(student.trainable_variables)
    optimizers[1].build(gen.trainable_variables)
    return frozen, student, gen, optimizers


def _clone(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def test_iteration_updates_student_and_generator_never_the_teacher(tiny):
    _, _, teacher_dir = tiny
    config = _config(tiny, "unused", student_steps=3)
    frozen, student, gen, optimizers = _networks(teacher_dir)
    before = [[w.copy() for w in m.get_weights()] for m in (frozen, student, gen)]
    step = distill.make_iteration_fn(frozen, student, gen, *optimizers, config)
    for i in range(2):
        step(tf.random.normal((8, 16)), tf.constant(i, tf.int64))
    for old, new in zip(before[0], frozen.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)  # incl. BN moving statistics
    for name, model, old in (
        ("student", student, before[1]),
        ("generator", gen, before[2]),
    ):
        changed = [
            not np.array_equal(a, b)
            for a, b in zip(old, model.get_weights(), strict=True)
        ]
        assert np.mean(changed) > 0.9, name
    assert int(optimizers[0].iterations) == 6  # n_s = 3 student updates per iteration
    assert int(optimizers[1].iterations) == 2  # n_g = 1 generator update per iteration


def _np_losses(t_out, s_out, beta):
    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    def attention(a):
        e = (a.astype(np.float64) ** 2).mean(-1).reshape(len(a), -1)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    log_t, log_s = (
        log_softmax(t_out["logits"].numpy()),
        log_softmax(s_out["logits"].numpy()),
    )
    kl = (np.exp(log_t) * (log_t - log_s)).mean()
    at = sum(
        ((attention(s_out[k].numpy()) - attention(t_out[k].numpy())) ** 2).mean()
        for k in ("block1", "block2", "block3")
    )
    return kl, at, kl + beta * at


def test_logged_loss_terms_match_the_reference_formulas(tiny):
    _, _, teacher_dir = tiny
    config = _config(tiny, "unused", student_steps=1)
    frozen, student, gen, optimizers = _networks(teacher_dir)
    student_before, gen_before = _clone(student), _clone(gen)
    z = tf.random.normal((8, 16))
    values = distill.make_iteration_fn(frozen, student, gen, *optimizers, config)(
        z, tf.constant(0, tf.int64)
    )
    # Generator step: -KL on the generator's images before its update.
    images = gen_before(z, training=True)
    t_out, s_out = frozen(images, training=False), student_before(images, training=True)
    kl, _, _ = _np_losses(t_out, s_out, 250.0)
    assert float(values["train/generator_loss"]) == pytest.approx(-kl, rel=1e-4)
    probs = tf.nn.softmax(t_out["logits"]).numpy().max(-1).mean()
    assert float(values["train/teacher_max_prob"]) == pytest.approx(probs, rel=1e-4)
    # Student step: KL + 250 * attention on the updated generator's images, same z.
    images = gen(z, training=True)
    t_out, s_out = frozen(images, training=False), student_before(images, training=True)
    kl, at, total = _np_losses(t_out, s_out, 250.0)
    assert float(values["train/kl"]) == pytest.approx(kl, rel=1e-4)
    assert float(values["train/attention"]) == pytest.approx(at, rel=1e-4)
    assert float(values["train/student_loss"]) == pytest.approx(total, rel=1e-4)


def test_cli_end_to_end_leaves_every_output(tmp_path, tiny):
    root, _, teacher_dir = tiny
    out = tmp_path / "zs"
    result = run_program(
        "zskt-tf-distill",
        f"--teacher={teacher_dir}",
        "--dataset=folder",
        f"--data_dir={root}",
        f"--cache_dir={tmp_path / 'c'}",
        "--student_depth=10",
        "--batch_size=8",
        "--z_dim=16",
        "--total_iterations=4",
        "--n_s=2",
        "--eval_every=2",
        "--seeds=0,1",
        f"--output_dir={out}",
    )
    assert "zero-shot student test accuracy" in result.stdout
    for seed in (0, 1):
        run = out / f"seed_{seed}"
        for name in (
            "student.weights.h5",
            "generator.weights.h5",
            "config.json",
            "results.json",
            "samples.png",
            "accuracy.png",
        ):
            assert (run / name).is_file(), (seed, name)
        results = json.loads((run / "results.json").read_text())
        assert [e["iteration"] for e in results["evaluations"]] == [0, 2, 4]
        assert {"generator_loss", "teacher_max_prob", "student_max_prob"} <= set(
            results["evaluations"][-1]
        )
        assert results["seconds_per_iteration"] > 0
    summary = json.loads((out / "results.json").read_text())
    finals = [summary["seeds"]["0"], summary["seeds"]["1"]]
    assert summary["test_accuracy_mean"] == pytest.approx(np.mean(finals))
    assert summary["test_accuracy_std"] == pytest.approx(np.std(finals))
    tags = set()
    for event_file in (out / "seed_0" / "logs").glob("events.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags |= {value.tag for value in event.summary.value}
    assert {
        "train/generator_loss",
        "train/student_lr",
        "test/accuracy",
        "train/teacher_max_prob",
        "pseudo_images",
    } <= tags
    # The student loads like any run directory and is the student that was evaluated.
    student = wide_resnet(10, 1, 3, (16, 16, 3))
    model_io.load_weights_checked(student, out / "seed_0" / "student.weights.h5", "s")


def test_stop_at_and_rerun_equal_an_uninterrupted_run(tmp_path, tiny):
    _, data, _ = tiny
    straight = _config(tiny, tmp_path / "straight", total_iterations=5)
    distill.distill_one_seed(straight, data)
    chunked = dataclasses.replace(
        straight, output_dir=str(tmp_path / "chunked"), stop_at=2
    )
    with pytest.raises(checkpoints.Interrupted, match="iteration 2/5"):
        distill.distill_one_seed(chunked, data)
    with pytest.raises(checkpoints.Interrupted, match="iteration 3/5"):
        distill.distill_one_seed(dataclasses.replace(chunked, stop_at=3), data)
    # A stopped run leaves a usable student and its pictures; rerunning with the same
    # --stop_at stops again at once without training further.
    for name in ("student.weights.h5", "generator.weights.h5", "samples.png"):
        assert (tmp_path / "chunked" / name).is_file()
    stopped = weights_arrays(tmp_path / "chunked" / "student.weights.h5")
    with pytest.raises(checkpoints.Interrupted, match="iteration 3/5"):
        distill.distill_one_seed(dataclasses.replace(chunked, stop_at=3), data)
    again = weights_arrays(tmp_path / "chunked" / "student.weights.h5")
    assert all(np.array_equal(stopped[k], again[k]) for k in stopped)
    resumed = distill.distill_one_seed(dataclasses.replace(chunked, stop_at=None), data)
    assert resumed["iterations"] == 5
    for name in ("student.weights.h5", "generator.weights.h5"):
        expected = weights_arrays(tmp_path / "straight" / name)
        actual = weights_arrays(tmp_path / "chunked" / name)
        for key in expected:
            np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)
    straight_history = json.loads((tmp_path / "straight" / "history.json").read_text())
    assert resumed["evaluations"] == straight_history


def test_the_seed_alone_determines_a_run(tmp_path, tiny):
    # distill() loads the teacher once for all seeds; each seed's run must equal the
    # same seed run on its own, and different seeds must start differently.
    root, data, _ = tiny
    config = _config(
        tiny,
        tmp_path / "both",
        total_iterations=2,
        eval_every=2,
        data_dir=str(root),
        cache_dir=str(tmp_path / "cache"),
    )
    distill.distill(config, seeds=(0, 1))
    alone = dataclasses.replace(config, seed=1, output_dir=str(tmp_path / "alone"))
    distill.distill_one_seed(alone, data)
    seed_0, seed_1, seed_1_alone = (
        weights_arrays(tmp_path / run / "student.weights.h5")
        for run in ("both/seed_0", "both/seed_1", "alone")
    )
    for key in seed_1:
        np.testing.assert_array_equal(seed_1_alone[key], seed_1[key], err_msg=key)
    assert any(not np.array_equal(seed_0[k], seed_1[k]) for k in seed_0)


def test_bad_input_is_caught_before_training(tmp_path, tiny):
    root, data, teacher_dir = tiny
    with pytest.raises(UserError, match="not found"):
        distill.distill_one_seed(
            _config(tiny, tmp_path / "a", teacher=str(tmp_path / "missing")), data
        )
    with pytest.raises(UserError, match="has no config.json"):
        distill.distill_one_seed(_config(tiny, tmp_path / "a", teacher=str(root)), data)
    # Weights that do not fit the recorded architecture.
    wrong = tmp_path / "wrong"
    shutil.copytree(teacher_dir, wrong)
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps(config | {"width": 1}))
    with pytest.raises(UserError, match="do not fit.*expected shape .*found"):
        distill.distill_one_seed(
            _config(tiny, tmp_path / "b", teacher=str(wrong)), data
        )
    # A dataset whose class count differs from the teacher's.
    four = datasets.load_dataset(
        "folder", write_tiny_folder(tmp_path / "four", 4), tmp_path / "c"
    )
    with pytest.raises(UserError, match="4 classes but the teacher predicts 3"):
        distill.distill_one_seed(_config(tiny, tmp_path / "d"), four)
    with pytest.raises(UserError, match="invalid Wide ResNet depth"):
        distill.distill_one_seed(_config(tiny, tmp_path / "e", student_depth=12), data)
    for name in "abde":
        assert not (tmp_path / name).exists()
    # A student whose taps cannot be matched.
    big = wide_resnet(10, 1, 3, (32, 32, 3))
    small = wide_resnet(10, 1, 3, (16, 16, 3))
    with pytest.raises(UserError, match="attention transfer needs matching taps"):
        distill.check_attention_compatible(big, small)
    # Through the command line: one line, status 2.
    result = run_program(
        "zskt-tf-distill",
        f"--teacher={tmp_path / 'none'}",
        f"--output_dir={tmp_path / 'f'}",
        check=False,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error:" in result.stderr and "not found" in result.stderr
    assert not (tmp_path / "f").exists()  # nothing is written for bad input


def test_non_finite_loss_stops_with_a_clear_error(tmp_path, tiny):
    _, data, teacher_dir = tiny
    poisoned = tmp_path / "poisoned"
    shutil.copytree(teacher_dir, poisoned)
    with h5py.File(poisoned / "teacher.weights.h5", "r+") as file:
        kernel = file["layers/dense/vars/0"]
        kernel[...] = np.full(kernel.shape, np.nan, np.float32)
    out = tmp_path / "nan"
    with pytest.raises(UserError, match="non-finite loss at iteration 1"):
        distill.distill_one_seed(_config(tiny, out, teacher=str(poisoned)), data)
    assert not list((out / "checkpoints").glob("ckpt-*.index"))


def test_adam_clips_by_global_norm_five_with_torch_epsilon():
    variable = tf.Variable(tf.zeros([4]))
    optimizer = distill._adam(1e-3, 5.0, False)
    assert optimizer.epsilon == 1e-8 and optimizer.global_clipnorm == 5.0
    optimizer.build([variable])
    optimizer.apply([tf.constant([60.0, 80.0, 0.0, 0.0])], [variable])  # norm 100
    first_moment = optimizer.variables[2]  # after iterations and learning_rate
    # m = (1 - beta_1) * clipped gradient = 0.1 * (3, 4, 0, 0).
    np.testing.assert_allclose(first_moment.numpy(), [0.3, 0.4, 0.0, 0.0], rtol=1e-5)


def test_schedule_iterations_sets_the_cosine_period(tiny):
    _, _, teacher_dir = tiny
    frozen, student, gen, optimizers = _networks(teacher_dir)
    config = _config(
        tiny, "unused", total_iterations=10, schedule_iterations=40, student_steps=1
    )
    step = distill.make_iteration_fn(frozen, student, gen, *optimizers, config)
    step(tf.random.normal((8, 16)), tf.constant(20, tf.int64))
    # Halfway through a 40-iteration cosine: half the initial learning rates.
    assert float(optimizers[0].learning_rate) == pytest.approx(1e-3, rel=1e-5)
    assert float(optimizers[1].learning_rate) == pytest.approx(5e-4, rel=1e-5)
    with pytest.raises(UserError, match="schedule_iterations"):
        _config(tiny, "x", total_iterations=10, schedule_iterations=5).validate()
