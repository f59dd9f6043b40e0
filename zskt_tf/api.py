"""The Python API in Keras' vocabulary: models in, the trained student out.

    import zskt_tf
    student = zskt_tf.distill(teacher, student=make_student, input_scale="0,255",
                              total_iterations=2000, output_dir="runs/mine")

Everything a notebook needs is on the package (zskt_tf.distill, train_teacher,
load_run, export, make_strategy); the run directories, resumption, progress and
TensorBoard logs are those of the command-line programs.
"""

from __future__ import annotations

import dataclasses
import pathlib
import tempfile

import keras
import numpy as np

from zskt_tf import configs, datasets, model_io
from zskt_tf.errors import UserError


def _test_data(test_data, num_classes: int) -> tuple[str | None, object]:
    """(dataset name, ImageData or None) from what the user passed."""
    if test_data is None or isinstance(test_data, str):
        return test_data, None
    try:
        images, labels = test_data
    except (TypeError, ValueError):
        raise UserError(
            "test_data must be (images, labels) arrays, a dataset name or None"
        ) from None
    images, labels = np.asarray(images), np.asarray(labels).astype(np.int64)
    if images.ndim == 3:  # (N, H, W) gray images
        images = images[..., None]
    if images.ndim != 4 or len(images) != len(labels):
        raise UserError(
            f"test_data images {images.shape} and labels {labels.shape} do not match"
            ": give (N, H, W, C) pixels in [0, 255] and N labels"
        )
    info = datasets.DatasetInfo(
        "test_data",
        tuple(str(k) for k in range(num_classes)),
        tuple(images.shape[1:]),
        (0.0,) * images.shape[-1],
        (1.0,) * images.shape[-1],
        augment=False,
    )
    empty = np.zeros((0, *images.shape[1:]), np.uint8)
    pixels = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    return None, datasets.ImageData(info, empty, labels[:0], pixels, labels)


def distill(
    teacher,
    student=None,
    *,
    input_scale: str | None = None,
    test_data=None,
    output_dir: str | pathlib.Path | None = None,
    seed: int = 0,
    strategy=None,
    preset: str | None = None,
    **settings,
) -> keras.Model:
    """Zero-shot distillation of a teacher into a student, with no training data.

    Args:
        teacher: a keras.Model (functional or Sequential, ending in logits or a
            softmax), a .keras file, a zskt_tf teacher run directory or
            "embedded:<name>".
        student: a function that builds the student (called once per seed, so each
            seed starts from its own initialisation), a keras.Model (cloned:
            its architecture is trained from scratch), "wrn-D-K" or a .keras file;
            default WRN-16-1 (the paper's).
        input_scale: how the teacher's inputs are scaled ("0,255", "0,1", "-1,1",
            "imagenet" or "mean=...:std=..."); a zskt_tf teacher records its own.
        test_data: (images, labels) with pixels in [0, 255], a dataset name
            ("cifar10", "fashion_mnist", "embedded:cifar10-test-2k"; local files
            through data_dir=...), or None: the run then reports how often student
            and teacher agree on fresh generator images.
        output_dir: where the run lives; rerunning the same call resumes it there.
            None: a temporary directory (not resumable).
        seed: the seed of the student's and the generator's initialisation and of
            the noise.
        strategy: a tf.distribute strategy (zskt_tf.make_strategy).
        preset: "paper" (the default) or "budget" (zskt_tf.configs.PRESETS): its
            values replace the defaults; settings given here still win.
        **settings: any zskt_tf.configs.DistillConfig field: total_iterations,
            beta, attention_pairs ("auto" or [("teacher_layer", "student_layer")] or
            keras.distillation.FeatureDistillation objects), bn_prior, replay_size,
            eval_every, ... Defaults are the paper's.

    Returns:
        The trained student, a keras.Model (for a Wide ResNet, its output is the
        dict {"logits", "block1", "block2", "block3"}).

    Raises:
        UserError: a teacher, student or setting that cannot work, in one line.
    """
    from zskt_tf import distill as distill_module

    fields = {field.name for field in dataclasses.fields(configs.DistillConfig)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise UserError(
            f"unknown setting {unknown[0]!r}; see zskt_tf.configs.DistillConfig"
        )
    settings = configs.preset(preset) | settings
    pairs = settings.pop("attention_pairs", None)
    if pairs is not None and not isinstance(pairs, str):
        from zskt_tf import networks

        pairs = ",".join(str(pair) for pair in networks.parse_pairs(pairs))
    if output_dir is None:
        output_dir = tempfile.mkdtemp(prefix="zskt_tf_run_")
    description = str(teacher)
    if model_io.is_keras_file(teacher):  # loaded here to label test arrays
        teacher = model_io.load_keras(teacher, "the teacher")
    elif isinstance(teacher, keras.Model):
        from zskt_tf import players

        description = players.IN_MEMORY + teacher.name
    if test_data is None:  # a dataset name as the programs take it
        test_data = settings.pop("dataset", None)
    elif "dataset" in settings:
        raise UserError("give test_data or dataset, not both")
    dataset, data = _test_data(test_data, _classes(teacher))
    config = configs.DistillConfig(
        teacher=description,
        output_dir=str(output_dir),
        input_scale=input_scale,
        attention_pairs=pairs,
        dataset=dataset,
        seed=seed,
        **settings,
    )
    if configs.preset(preset):
        from absl import logging

        logging.info(configs.preset_description(preset, config))
    in_memory = teacher if isinstance(teacher, keras.Model) else None
    _, trained = distill_module.distill_one_seed(
        config, data, strategy, in_memory, student, return_student=True
    )
    return trained


def _classes(teacher) -> int:
    """The teacher's class count, to name the classes of test arrays."""
    if isinstance(teacher, keras.Model):
        from zskt_tf import networks

        return networks.check_classifier(teacher, "the teacher")[1]
    record = model_io.teacher_record(teacher)
    return len(record["dataset_info"]["class_names"])


def load_run(run_dir: str | pathlib.Path) -> keras.Model:
    """The trained network of a run directory (a teacher, a zero-shot seed_<s> or a
    few-shot run), or "embedded:<name>": a keras.Model with its weights."""
    network, _ = model_io.load_network(run_dir)
    return getattr(network, "model", network)


def export_model(
    model: keras.Model,
    path: str | pathlib.Path,
    input_scale: str,
    format: str = "tflite",  # noqa: A002 (the CLI's --format)
    quantize: str = "none",
    class_names=None,
) -> pathlib.Path:
    """Exports a trained classifier that takes pixels in [0, 255] and returns class
    probabilities: a .tflite file or a SavedModel directory (zskt_tf.export).

    Args:
        model: e.g. the student zskt_tf.distill returned.
        path: the .tflite file or SavedModel directory to write.
        input_scale: the model's input convention (as for distill).
        format: "tflite" or "saved_model".
        quantize: TFLite weights: "none", "dynamic" (int8) or "float16".
        class_names: for the record; default "0", "1", ...
    """
    from zskt_tf import export, networks, pixels

    if format not in export.FORMATS:
        raise UserError(f"format must be one of {', '.join(export.FORMATS)}")
    shape, classes = networks.check_classifier(model, "the model")
    scale = pixels.parse(input_scale, shape[-1])
    info = datasets.DatasetInfo(
        "export",
        tuple(class_names or (str(k) for k in range(classes))),
        shape,
        scale.mean,
        scale.std,
        augment=False,
    )
    network = networks.TappedNetwork(model)
    if format == "saved_model":
        return export.export_saved_model(network, info, path)
    return export.export_tflite(network, info, path, quantize)
