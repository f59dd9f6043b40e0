"""Zero-shot distillation of Keras models that are not Wide ResNets: Sequential and
keras.applications teachers, softmax heads, other input sizes, the Python API, and
the one-line errors for models that cannot work."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import zskt_tf
from tests.helpers import user_error, weights_arrays
from zskt_tf import distill, model_io, networks, zero_shot
from zskt_tf.errors import UserError


def cnn(width, classes=4, shape=(28, 28, 1), softmax=True, name=None):
    """A small Sequential CNN with BatchNorm, ending in a softmax (or logits)."""
    return keras.Sequential(
        [
            keras.Input(shape),
            keras.layers.Conv2D(width, 3, padding="same", activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(2 * width, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(classes, activation="softmax" if softmax else None),
        ],
        name=name,
    )


TINY = dict(total_iterations=2, batch_size=8, z_dim=16, student_steps=1, eval_every=1)


def test_a_sequential_teacher_at_28x28x1_into_a_small_cnn(tmp_path):
    teacher = cnn(8, name="teacher")
    teacher_before = [w.copy() for w in teacher.get_weights()]
    pixels = np.random.default_rng(0).integers(0, 256, (24, 28, 28, 1), np.uint8)
    labels = np.arange(24) % 4
    student = zskt_tf.distill(
        teacher,
        student=lambda: cnn(4, name="small"),
        input_scale="0,255",
        test_data=(pixels, labels),
        beta=0,
        output_dir=tmp_path / "run",
        **TINY,
    )
    assert isinstance(student, keras.Model) and student.name == "small"
    assert student.input_shape == (None, 28, 28, 1)
    for before, after in zip(teacher_before, teacher.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)  # the teacher is frozen
    saved = model_io.load_keras(tmp_path / "run" / "student.keras", "the student")
    for mine, theirs in zip(student.get_weights(), saved.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    fresh = keras.models.clone_model(student)  # a new initialisation of the same net
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(student.get_weights(), fresh.get_weights(), strict=True)
    )
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["input_scale"] == "0,255" and config["input_shape"] == [28, 28, 1]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["iterations"] == 2 and 0.0 <= results["test_accuracy"] <= 1.0
    # The saved student loads as a run, and exports with its input convention.
    assert zskt_tf.load_run(tmp_path / "run").name == "small"


def test_a_softmax_head_gives_exact_log_probabilities():
    model = cnn(4, shape=(16, 16, 3))
    network = networks.TappedNetwork(model)
    assert network.softmax is not None and network.softmax[0] == "activation"
    images = tf.random.normal((5, 16, 16, 3))
    log_p = network(images, training=False)["logits"]
    probabilities = model(images, training=False)
    np.testing.assert_allclose(np.exp(log_p), probabilities, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(tf.reduce_logsumexp(log_p, -1), 0.0, atol=1e-5)
    # The head is undone exactly: a probability float32 rounds to 0 still has a
    # finite logarithm, and the gradient flows through the pre-softmax values.
    dense = model.layers[-1]
    dense.bias.assign(tf.constant([200.0, 0.0, 0.0, 0.0]))
    with tf.GradientTape() as tape:
        tape.watch(images)
        log_p = network(images, training=False)["logits"]
        total = tf.reduce_sum(log_p[:, 1])
    assert float(tf.reduce_min(model(images)[:, 1])) == 0.0
    assert np.all(np.isfinite(log_p)) and float(tf.reduce_max(log_p[:, 1])) < -150
    assert float(tf.norm(tape.gradient(total, images))) > 0
    assert "call" not in vars(dense)  # the model is unchanged outside the call


@pytest.fixture
def fewer_agreement_images(monkeypatch):
    """Data-free runs measure agreement on 1024 generator images per evaluation;
    256 keep these tests short."""
    monkeypatch.setattr(zero_shot, "AGREEMENT_IMAGES", 256)


def test_a_keras_applications_teacher_with_auto_pairs_and_the_nested_bn_prior(
    tmp_path, caplog, fewer_agreement_images
):
    base = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=5
    )
    teacher = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Rescaling(1.0), base], name="mine"
    )
    config = zskt_tf.DistillConfig(
        teacher="in-memory:mine",
        output_dir=str(tmp_path / "run"),
        input_scale="-1,1",
        student="wrn-10-1",
        attention_pairs="auto",
        bn_prior=10.0,
        **(TINY | {"total_iterations": 1}),
    )
    with caplog.at_level("INFO"):
        results = distill.distill_one_seed(config, teacher=teacher)
    chosen = [r.getMessage() for r in caplog.records if "attention pairs" in r.message]
    assert len(chosen) == 1
    pairs = results["attention_layers"]
    # MobileNetV2 halves 32x32 at its stem: the sizes shared with the WRN are 16x16
    # and 8x8, each paired with the last WRN feature map of that size.
    assert [p.split(":")[1] for p in pairs] == [
        "group3_block0_1_relu",
        "head_relu",
    ]
    assert all(p.startswith("mobilenetv2_0.35_32/") for p in pairs)
    assert all(p in chosen[0] for p in pairs)
    last = results["history"][-1]
    assert "agreement" in last and np.isfinite(last["bn_loss"])
    nested = networks.batch_norm_layers(teacher)
    assert len(nested) == 52 and all(p.startswith("mobilenetv2") for p in nested)


def test_auto_pairs_skip_padding_layers():
    # A WRN pads each map before a convolution (32x32 -> 34x34): a padded map is
    # not a feature map of its own, so two WRNs pair at 32, 16 and 8 only.
    teacher = zskt_tf.wide_resnet(10, 2)
    student = zskt_tf.wide_resnet(10, 1)
    pairs = networks.auto_pairs(teacher, student, (32, 32, 3))
    assert [p.student_layer_name for p in pairs] == [
        "group2_block0_1_relu",
        "group3_block0_1_relu",
        "head_relu",
    ]
    assert [p.teacher_layer_name for p in pairs] == [
        p.student_layer_name for p in pairs
    ]


def test_a_64x64_teacher_runs_with_a_three_stage_generator(
    tmp_path, fewer_agreement_images
):
    teacher = cnn(4, classes=3, shape=(64, 64, 3), softmax=False)
    zskt_tf.distill(
        teacher,
        student=lambda: cnn(2, classes=3, shape=(64, 64, 3)),
        input_scale="imagenet",
        beta=0,
        student_ema=0.5,
        output_dir=tmp_path / "run",
        **TINY,
    )
    generator = weights_arrays(tmp_path / "run" / "generator.weights.h5")
    kernels = [k for k in generator if k.startswith("layers/conv2d") and "vars/0" in k]
    assert len(kernels) == 4  # 8 -> 16 -> 32 -> 64, then the image conv
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["history"][-1]["iteration"] == 2 and "agreement" in results
    # With the weight average, data-free evaluations report the live student too.
    assert 0.0 <= results["history"][-1]["agreement_live"] <= 1.0


def _bad(teacher, tmp_path, **settings):
    options = dict(input_scale="0,1", output_dir=tmp_path / "bad", **TINY)
    with pytest.raises(UserError) as error:
        zskt_tf.distill(teacher, **(options | settings))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "bad").exists()  # nothing is written for bad input
    return str(error.value)


def test_models_that_cannot_work_get_one_line_and_nothing_written(tmp_path):
    inputs = keras.Input((16, 16, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    two = keras.Model(inputs, [keras.layers.Dense(3)(features)] * 2)
    assert "has 2 outputs" in _bad(two, tmp_path)
    named = keras.Model(inputs, {"scores": keras.layers.Dense(3)(features)})
    assert "dict without 'logits'" in _bad(named, tmp_path)
    teacher = cnn(4, classes=3, shape=(16, 16, 3))
    message = _bad(teacher, tmp_path, student=lambda: cnn(2, 5, (16, 16, 3)))
    assert "predicts 5 classes" in message and "predicts 3" in message
    message = _bad(teacher, tmp_path, student=lambda: cnn(2, 3, (32, 32, 3)))
    assert "takes (32, 32, 3)" in message and "takes (16, 16, 3)" in message
    # Keras numbers layers from a process-wide counter, so a numbered name such as
    # conv2d_9 may exist in some test orders; no generated name has a word suffix
    message = _bad(
        teacher, tmp_path, student="wrn-10-1", attention_pairs="conv2d_typo:head_relu"
    )
    assert "no layer 'conv2d_typo'" in message and "closest: conv2d" in message
    plain = keras.Sequential(
        [keras.Input((16, 16, 3)), keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    assert "--bn_prior needs BatchNormalization" in _bad(
        plain, tmp_path, bn_prior=1.0, beta=0
    )
    assert "--input_scale" in _bad(teacher, tmp_path, input_scale=None)
    # The weight average needs a second student: a builder that hands back one
    # model every time cannot give it.
    same = cnn(2, 3, (16, 16, 3))
    assert "returned the same model twice" in _bad(
        teacher, tmp_path, student=lambda: same, student_ema=0.9
    )
    message = _bad(
        teacher,
        tmp_path,
        student=iter([cnn(2, 3, (16, 16, 3)), cnn(3, 3, (16, 16, 3))]).__next__,
        student_ema=0.9,
    )
    assert "build the same architecture every call" in message
    assert "give it as mean=" in _bad(teacher, tmp_path, image_stats="0.2,0.3")
    assert "--image_stats" in _bad(teacher, tmp_path, image_stats="mean=0.2:std=0")


@keras.saving.register_keras_serializable(package="tests")
class Doubling(keras.layers.Layer):
    def call(self, inputs):
        return 2.0 * inputs


def test_keras_files_that_cannot_load_are_named(tmp_path):
    custom = keras.Sequential(
        [keras.Input((16, 16, 3)), Doubling(), cnn(2, 3, (16, 16, 3))]
    )
    custom.save(tmp_path / "custom.keras")
    registered = keras.saving.get_custom_objects().pop("tests>Doubling")
    try:
        stderr = user_error(
            "zskt-tf-distill",
            f"--teacher={tmp_path / 'custom.keras'}",
            "--input_scale=0,1",
            f"--output_dir={tmp_path / 'a'}",
        )
    finally:
        keras.saving.get_custom_objects()["tests>Doubling"] = registered
    assert "needs custom objects it does not carry: tests>Doubling" in stderr
    whole = (tmp_path / "custom.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match="not a whole .keras archive"):
        zskt_tf.distill(str(tmp_path / "cut.keras"), input_scale="0,1")
    assert not (tmp_path / "a").exists()
