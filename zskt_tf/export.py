"""Export of a trained student (or teacher) to SavedModel and TFLite.

The exported model takes RGB (or gray) pixels in [0, 255], uint8 or float, applies the
dataset's normalisation itself and returns class probabilities. A metadata.json with
the class names and input contract is written beside it.
"""

from __future__ import annotations

import pathlib
import tempfile

import keras
import numpy as np
import tensorflow as tf

from zskt_tf import model_io, pipelines, runs
from zskt_tf.datasets import DatasetInfo
from zskt_tf.errors import UserError

FORMATS = ("saved_model", "tflite")
QUANTIZATIONS = ("none", "dynamic", "float16")


def probabilities_fn(model: keras.Model, info: DatasetInfo):
    """pixels in [0, 255] (any real or integer dtype) -> class probabilities."""

    def probabilities(pixels):
        images = pipelines.normalize(tf.cast(pixels, tf.float32), info.mean, info.std)
        return tf.nn.softmax(model(images, training=False)["logits"], axis=-1)

    return probabilities


def _write_archive(model: keras.Model, info: DatasetInfo, path, signatures: dict):
    """Writes a SavedModel whose endpoints map pixels to {"probabilities": ...}.

    Args:
        signatures: endpoint name -> (batch size or None, input dtype).
    """
    probabilities = probabilities_fn(model, info)
    archive = keras.export.ExportArchive()
    archive.track(getattr(model, "model", model))  # a TappedNetwork's Keras model
    for name, (batch, dtype) in signatures.items():
        archive.add_endpoint(
            name,
            lambda pixels: {"probabilities": probabilities(pixels)},
            input_signature=[
                tf.TensorSpec([batch, *info.image_shape], dtype, name="pixels")
            ],
        )
    with runs.atomic_directory(path) as temporary:
        archive.write_out(str(temporary), verbose=False)


def export_saved_model(
    model: keras.Model, info: DatasetInfo, path: str | pathlib.Path
) -> pathlib.Path:
    """Writes a SavedModel with float32 ('serving_default') and uint8 ('serve_uint8')
    signatures, each mapping (B, H, W, C) pixels to {"probabilities": (B, classes)}."""
    signatures = {
        "serving_default": (None, tf.float32),
        "serve_uint8": (None, tf.uint8),
    }
    _write_archive(model, info, path, signatures)
    return pathlib.Path(path)


def export_tflite(
    model: keras.Model,
    info: DatasetInfo,
    path: str | pathlib.Path,
    quantize: str = "none",
    input_dtype=tf.uint8,
) -> pathlib.Path:
    """Writes a TFLite model taking one (1, H, W, C) image of raw pixels.

    Args:
        quantize: "none" (float32), "dynamic" (int8 weights, dynamic-range) or
            "float16" (float16 weights).
        input_dtype: tf.uint8 for camera pixels, or tf.float32 for [0, 255] floats.
    """
    if quantize not in QUANTIZATIONS:
        raise UserError(f"quantize must be one of {', '.join(QUANTIZATIONS)}")
    # Converting a concrete function directly leaves Keras 3 variables unfrozen (the
    # interpreter then computes NaN); going through an exported SavedModel does not.
    with tempfile.TemporaryDirectory() as scratch:
        _write_archive(model, info, scratch, {"serve": (1, input_dtype)})
        converter = tf.lite.TFLiteConverter.from_saved_model(scratch, ["serve"])
        if quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        flatbuffer = converter.convert()
    path = pathlib.Path(path)
    with runs.atomic_path(path) as temporary:
        temporary.write_bytes(flatbuffer)
    return path


def tflite_interpreter_class() -> type:
    """LiteRT's interpreter (zskt_tf[tflite]) if installed, else TensorFlow's.

    tf.lite.Interpreter is deprecated in favour of the ai_edge_litert package (the same
    runtime, shipped on its own) and will leave TensorFlow; the fallback keeps a plain
    install working until then.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return tf.lite.Interpreter
    return Interpreter


def tflite_probabilities(path: str | pathlib.Path, pixels: np.ndarray) -> np.ndarray:
    """Runs a TFLite model exported here on (N, H, W, C) pixels, one image at a time."""
    interpreter = tflite_interpreter_class()(model_path=str(path))
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]
    target = interpreter.get_output_details()[0]
    outputs = []
    for image in pixels:
        interpreter.set_tensor(source["index"], image[None].astype(source["dtype"]))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(target["index"])[0])
    return np.stack(outputs)


def export(
    model_dir: str | pathlib.Path,
    fmt: str,
    output_dir: str | pathlib.Path,
    quantize: str = "none",
) -> pathlib.Path:
    """Exports a run's network; returns the SavedModel directory or .tflite file."""
    if fmt not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "saved_model" and quantize != "none":
        raise UserError("--quantize applies to --format=tflite only")
    model, config = model_io.load_network(model_dir)
    info = DatasetInfo.from_json(config["dataset_info"])
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "saved_model":
        target = export_saved_model(model, info, output_dir / "saved_model")
    else:
        suffix = "" if quantize == "none" else f"-{quantize}"
        target = export_tflite(
            model, info, output_dir / f"model{suffix}.tflite", quantize
        )
    shape = info.image_shape
    runs.write_json(
        output_dir / "metadata.json",
        {
            "class_names": list(info.class_names),
            "input": f"pixels in [0, 255], shape (batch, {', '.join(map(str, shape))})"
            + (
                ", uint8 or float32 signatures"
                if fmt == "saved_model"
                else ", uint8, batch 1"
            ),
            "output": "probabilities over class_names",
            "normalisation": {"mean": list(info.mean), "std": list(info.std)},
            "architecture": (
                f"WRN-{config['depth']}-{config['width']}"
                if "depth" in config
                else config.get("student_architecture", model.name)
            ),
            "source_run": str(pathlib.Path(model_dir).resolve()),
            "dataset": info.name,
        },
    )
    return target
