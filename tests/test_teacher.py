"""zskt-tf-teacher end to end, load_teacher, exact resume and bad input."""

import dataclasses
import json
import signal

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import (
    HANG_GUARD_SECONDS,
    run_program,
    start_program,
    weights_arrays,
    write_tiny_folder,
)
from zskt_tf import checkpoints, datasets, evaluation, model_io, supervised, teacher
from zskt_tf.errors import UserError
from zskt_tf.wide_resnet import wide_resnet


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = write_tiny_folder(tmp_path_factory.mktemp("tiny") / "data")
    return root, datasets.load_dataset("folder", root, tmp_path_factory.mktemp("cache"))


def _config(tmp_path, name, **overrides):
    return teacher.TeacherConfig(
        output_dir=str(tmp_path / name),
        dataset="folder",
        depth=10,
        width=1,
        epochs=2,
        batch_size=5,
        lr=0.05,
        **overrides,
    )


def test_cli_one_epoch_leaves_every_file(tmp_path, tiny):
    root, _ = tiny
    out = tmp_path / "run"
    result = run_program(
        "zskt-tf-teacher",
        "--dataset=folder",
        f"--data_dir={root}",
        f"--cache_dir={tmp_path / 'cache'}",
        "--depth=10",
        "--width=1",
        "--epochs=1",
        "--batch_size=8",
        f"--output_dir={out}",
    )
    assert "test accuracy" in result.stdout
    for name in ("teacher.weights.h5", "config.json", "results.json", "history.json"):
        assert (out / name).is_file(), name
    assert list((out / "logs").glob("events.out.tfevents.*"))
    assert list((out / "checkpoints").glob("ckpt-*.index"))
    config = json.loads((out / "config.json").read_text())
    assert (config["depth"], config["width"], config["num_classes"]) == (10, 1, 3)
    assert config["input_shape"] == [16, 16, 3]
    assert len(config["dataset_info"]["mean"]) == 3
    results = json.loads((out / "results.json").read_text())
    assert results["epochs"] == 1 and results["steps"] == 3
    assert 0.0 <= results["test_accuracy"] <= 1.0 and results["images_per_second"] > 0


def test_load_teacher_reproduces_the_trained_model(tmp_path, tiny):
    _, data = tiny
    config = _config(tmp_path, "t")
    results = teacher.train_teacher(config, data)
    loaded = model_io.load_teacher(config.output_dir)
    assert not loaded.trainable and loaded.trainable_variables == []
    # The model as trained, restored from its last checkpoint.
    trained = wide_resnet(10, 1, 3, (16, 16, 3))
    tf.train.Checkpoint(model=trained).restore(
        tf.train.latest_checkpoint(f"{config.output_dir}/checkpoints")
    ).expect_partial()
    images = tf.random.normal((6, 16, 16, 3))
    np.testing.assert_array_equal(
        loaded(images, training=False)["logits"].numpy(),
        trained(images, training=False)["logits"].numpy(),
    )
    accuracy = evaluation.accuracy(
        loaded, data.test_images, data.test_labels, data.info
    )
    assert accuracy == results["test_accuracy"]
    assert model_io.teacher_record(config.output_dir)["recorded_accuracy"] == accuracy


def test_interrupted_run_resumes_to_identical_weights(tmp_path, tiny):
    _, data = tiny
    straight = _config(tmp_path, "straight")
    teacher.train_teacher(straight, data)
    chunked = _config(tmp_path, "chunked", stop_at=3)  # mid-epoch: 5 steps per epoch
    with pytest.raises(checkpoints.Interrupted, match="step 3/10"):
        teacher.train_teacher(chunked, data)
    resumed = teacher.train_teacher(dataclasses.replace(chunked, stop_at=None), data)
    assert resumed["steps"] == 10 and len(resumed["history"]) == 2
    expected = weights_arrays(f"{straight.output_dir}/teacher.weights.h5")
    actual = weights_arrays(f"{chunked.output_dir}/teacher.weights.h5")
    assert expected.keys() == actual.keys()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def test_sigint_saves_a_checkpoint_and_rerun_continues(tmp_path, tiny):
    root, _ = tiny
    out = tmp_path / "sig"
    args = [
        "--dataset=folder",
        f"--data_dir={root}",
        f"--cache_dir={tmp_path / 'c'}",
        "--depth=10",
        "--width=1",
        "--epochs=400",
        "--batch_size=4",
        f"--output_dir={out}",
    ]
    process = start_program("zskt-tf-teacher", *args)
    for line in process.stdout:
        if "teacher step" in line:
            break
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=HANG_GUARD_SECONDS)[0]
    assert process.returncode == 130, output
    assert "Rerun the same command to resume" in output
    assert "Traceback" not in output
    saved = tf.train.latest_checkpoint(str(out / "checkpoints"))
    step = int(saved.rsplit("-", 1)[1])
    assert step >= 1
    rerun = run_program(
        "zskt-tf-teacher", *args, "--stop_at=" + str(step + 2), check=False
    )
    assert rerun.returncode == 130
    assert f"step {step + 2}/" in rerun.stderr


def test_bad_input(tmp_path, tiny):
    _, data = tiny
    config = _config(tmp_path, "busy", stop_at=1)
    with pytest.raises(checkpoints.Interrupted):
        teacher.train_teacher(config, data)
    other = dataclasses.replace(config, width=2)
    with pytest.raises(
        UserError, match="different configuration.*width: 1 there, 2 now"
    ):
        teacher.train_teacher(other, data)
    for bad in (
        dict(epochs=0),
        dict(batch_size=-3),
        dict(depth=18),
        dict(width=0),
        dict(dataset="imagenet"),
    ):
        with pytest.raises(UserError):
            dataclasses.replace(config, **bad).validate()


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--depth=18", "invalid Wide ResNet depth 18"),
        ("--epochs=0", "epochs must be positive"),
        ("--dataset=imagenet", "unknown dataset 'imagenet'"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, flag, message):
    result = run_program(
        "zskt-tf-teacher", flag, f"--output_dir={tmp_path / 'x'}", check=False
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [
        line for line in result.stderr.splitlines() if line.startswith("error")
    ]
    assert error_lines == [error_lines[0]] and message in error_lines[0]
    assert not (tmp_path / "x").exists()


def test_label_smoothing_loss_matches_numpy_and_zero_is_plain_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 10)).astype(np.float32) * 3
    labels = rng.integers(0, 10, 6)
    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    targets = np.full((6, 10), 0.1 / 10) + 0.9 * np.eye(10)[labels]
    expected = -(targets * log_p).sum(-1).mean()
    outputs = {"logits": tf.constant(logits)}
    smoothed = supervised.smoothed_cross_entropy(0.1)(None, labels, outputs)
    assert float(smoothed) == pytest.approx(expected, rel=1e-5)
    assert supervised.smoothed_cross_entropy(0.0) is supervised.cross_entropy
    with pytest.raises(UserError, match="label_smoothing must be in"):
        teacher.TeacherConfig(output_dir="x", label_smoothing=1.0).validate()
