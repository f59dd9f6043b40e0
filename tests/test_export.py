"""SavedModel and TFLite exports agree with the Keras model on real test images."""

import json
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import run_program, user_error
from zskt_tf import datasets, export, model_io
from zskt_tf.errors import UserError

TEACHER = "embedded:cifar10-wrn-16-2"


@pytest.fixture(scope="module")
def real_images():
    data = datasets.load_dataset("embedded:cifar10-test-2k")
    return data.test_images[:512], data


@pytest.fixture(scope="module")
def keras_probabilities(real_images):
    images, data = real_images
    model, config = model_io.load_network(TEACHER)
    return export.probabilities_fn(model, data.info)(images).numpy()


def test_saved_model_matches_keras(tmp_path, real_images, keras_probabilities):
    images, _ = real_images
    target = export.export(TEACHER, "saved_model", tmp_path)
    loaded = tf.saved_model.load(str(target))
    for signature, pixels in (
        ("serving_default", images.astype(np.float32)),
        ("serve_uint8", images),
    ):
        probabilities = loaded.signatures[signature](pixels=tf.constant(pixels))[
            "probabilities"
        ].numpy()
        np.testing.assert_array_equal(
            probabilities.argmax(-1), keras_probabilities.argmax(-1)
        )
        assert np.abs(probabilities - keras_probabilities).max() <= 1e-4
    metadata = json.loads((tmp_path / "metadata.json").read_text())
    assert (
        metadata["class_names"][0] == "airplane" and len(metadata["class_names"]) == 10
    )


def test_tflite_float_and_dynamic_quantisation(
    tmp_path, real_images, keras_probabilities
):
    images, _ = real_images
    float_path = export.export(TEACHER, "tflite", tmp_path)
    probabilities = export.tflite_probabilities(float_path, images)
    np.testing.assert_array_equal(
        probabilities.argmax(-1), keras_probabilities.argmax(-1)
    )
    assert np.abs(probabilities - keras_probabilities).max() <= 1e-4
    dynamic_path = export.export(TEACHER, "tflite", tmp_path, quantize="dynamic")
    quantised = export.tflite_probabilities(dynamic_path, images)
    agreement = np.mean(quantised.argmax(-1) == keras_probabilities.argmax(-1))
    assert agreement >= 0.99, agreement
    assert dynamic_path.stat().st_size < 0.5 * float_path.stat().st_size


def test_export_cli_and_bad_input(tmp_path):
    result = run_program(
        "zskt-tf-export",
        f"--model_dir={TEACHER}",
        "--format=tflite",
        "--quantize=float16",
        f"--output_dir={tmp_path}",
    )
    assert (tmp_path / "model-float16.tflite").is_file()
    assert "exported" in result.stdout
    stderr = user_error("zskt-tf-export", f"--model_dir={tmp_path / 'nothing'}")
    assert "not found" in stderr or "holds no" in stderr


def test_a_multi_seed_directory_names_a_seed_to_pick(tmp_path):
    for name in ("seed_10", "seed_2", "seed_007"):
        (tmp_path / name).mkdir()
    with pytest.raises(UserError, match=r"holds no student .*e\.g\. .*seed_2$"):
        model_io.load_network(tmp_path)


def test_tflite_runs_on_litert_and_falls_back_to_tensorflow(monkeypatch):
    # The test extra installs ai-edge-litert: exported files run on LiteRT.
    assert export.tflite_interpreter_class().__module__.startswith("ai_edge_litert")
    # Without it, TensorFlow's own (deprecated) interpreter still runs them.
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    assert export.tflite_interpreter_class() is tf.lite.Interpreter
