"""Weights-only model files: checked loading, and teachers rebuilt from config.json."""

from __future__ import annotations

import json
import pathlib
import tempfile
import zipfile

import h5py
import keras

from zskt_tf import embedded, runs
from zskt_tf.datasets import DatasetInfo
from zskt_tf.errors import UserError
from zskt_tf.wide_resnet import wide_resnet

TEACHER_WEIGHTS = "teacher.weights.h5"
STUDENT_WEIGHTS = "student.weights.h5"
GENERATOR_WEIGHTS = "generator.weights.h5"
# A student that is not a Wide ResNet is saved whole (architecture and weights).
STUDENT_MODEL = "student.keras"


def is_keras_file(path) -> bool:
    return isinstance(path, (str, pathlib.Path)) and str(path).endswith(".keras")


def _custom_classes(path: pathlib.Path) -> list[str]:
    """Classes a .keras archive's config names outside Keras itself."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return []
    found = []

    def visit(node):
        if isinstance(node, dict):
            module = node.get("module")
            if (
                "class_name" in node
                and module is not None
                and not str(module).startswith("keras")
            ):
                found.append(node.get("registered_name") or node["class_name"])
            if "class_name" in node and module is None and node.get("registered_name"):
                found.append(node["registered_name"])
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)
    return sorted(set(found))


def load_keras(path: str | pathlib.Path, what: str) -> keras.Model:
    """Loads a model saved with model.save("....keras"), or says in one line why not.

    Raises:
        UserError: a missing file, a file that is not a whole .keras archive
            (truncated or damaged), custom classes that are not registered (named),
            or a Lambda layer (which only loads with safe_mode off).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} not found")
    if not zipfile.is_zipfile(path):
        raise UserError(
            f"{what} {path} is not a whole .keras archive (truncated or damaged); "
            "save it again with model.save(...)"
        )
    try:
        model = keras.models.load_model(path, compile=False)
    except (TypeError, ValueError, KeyError, OSError, zipfile.BadZipFile) as error:
        custom = _custom_classes(path)
        if custom:
            raise UserError(
                f"{what} {path} needs custom objects it does not carry: "
                f"{', '.join(custom)}; import the code that defines them, registered "
                "with @keras.saving.register_keras_serializable(), or load the "
                "model yourself and pass it in Python"
            ) from None
        if "Lambda" in str(error):
            raise UserError(
                f"{what} {path} has a Lambda layer, whose code Keras only loads with "
                "safe_mode=False: load it yourself with keras.models.load_model(path, "
                "safe_mode=False) and pass the model in Python"
            ) from None
        first = str(error).strip().splitlines()[0][:200] if str(error) else ""
        raise UserError(f"cannot load {what} {path}: {first}") from None
    if not isinstance(model, keras.Model):
        raise UserError(f"{what} {path} holds a {type(model).__name__}, not a model")
    return model


def save_weights(model: keras.Model, path: str | pathlib.Path) -> None:
    """model.save_weights written atomically: a crash or a full disk leaves the
    previous file whole (zskt_tf.runs.atomic_path)."""
    with runs.atomic_path(path) as temporary:
        model.save_weights(temporary)


def save_network(network, output_dir: str | pathlib.Path, weights_name: str):
    """Writes a trained network into its run directory, atomically: a zskt_tf Wide
    ResNet as weights (weights_name; its config.json rebuilds it), any other Keras
    model (a networks.TappedNetwork's) whole, as student.keras. Returns the path."""
    model = getattr(network, "model", None)
    if model is None:
        path = pathlib.Path(output_dir) / weights_name
        save_weights(network, path)
        return path
    path = pathlib.Path(output_dir) / STUDENT_MODEL
    with runs.atomic_path(path) as temporary:
        model.save(temporary)
    return path


def _shapes(path) -> dict[str, tuple]:
    shapes = {}
    with h5py.File(path, "r") as file:
        file.visititems(
            lambda name, item: (
                shapes.__setitem__(name, tuple(item.shape))
                if isinstance(item, h5py.Dataset)
                else None
            )
        )
    return shapes


def load_weights_checked(
    model: keras.Model, path: str | pathlib.Path, what: str
) -> None:
    """Loads a .weights.h5 file, or names the first tensor that does not fit.

    Raises:
        UserError: the file is missing, unreadable, or its tensors do not match the
            model (the message gives the first mismatching tensor's expected and
            found shapes).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise UserError(f"{what} weights {path} not found")
    try:
        found = _shapes(path)
    except OSError as error:
        raise UserError(f"cannot read {what} weights {path}: {error}") from None
    with tempfile.TemporaryDirectory() as scratch:
        reference = pathlib.Path(scratch) / "expected.weights.h5"
        model.save_weights(reference)
        expected = _shapes(reference)
    for name, shape in expected.items():
        if found.get(name) != shape:
            raise UserError(
                f"{what} weights {path} do not fit {model.name}: {name} expected "
                f"shape {shape}, found {found.get(name, 'nothing')}"
            )
    if len(found) != len(expected):
        extra = sorted(set(found) - set(expected))[0]
        raise UserError(
            f"{what} weights {path} do not fit {model.name}: unexpected tensor {extra}"
        )
    model.load_weights(path)


def resolve_run(
    path: str | pathlib.Path, weights_name: str
) -> tuple[pathlib.Path, dict]:
    """(weights file, config dict) for a run directory or a weights file in one.

    "embedded:<name>" names a teacher shipped with the package (zskt_tf.embedded).
    """
    if embedded.is_embedded(str(path)):
        path = embedded.teacher_path(str(path))
    path = pathlib.Path(path)
    if path.is_dir():
        weights = path / weights_name
    elif path.is_file():
        weights, path = path, path.parent
    else:
        raise UserError(f"{path} not found: give a run directory or its {weights_name}")
    if not (path / runs.CONFIG_FILE).is_file():
        raise UserError(
            f"{path} has no {runs.CONFIG_FILE}; is it a zskt_tf run directory?"
        )
    return weights, runs.read_json(path / runs.CONFIG_FILE)


def teacher_record(path: str | pathlib.Path) -> dict:
    """The teacher run's config.json plus its recorded test accuracy, if any."""
    weights, config = resolve_run(path, TEACHER_WEIGHTS)
    results_path = weights.parent / runs.RESULTS_FILE
    results = runs.read_json(results_path) if results_path.is_file() else {}
    return {
        **config,
        "weights": str(weights),
        "recorded_accuracy": results.get("test_accuracy"),
    }


def load_teacher(path: str | pathlib.Path) -> keras.Model:
    """Rebuilds a frozen teacher from its weights and config.json alone.

    Args:
        path: a zskt-tf-teacher output directory, or the teacher.weights.h5 in one.

    Returns:
        The WRN with the teacher's weights, trainable = False. Call it with
        training=False.
    """
    record = teacher_record(path)
    model = _build_and_load(record, record["weights"], "teacher")
    model.trainable = False
    return model


def load_network(model_dir: str | pathlib.Path) -> tuple[keras.Model, dict]:
    """Loads the network of a teacher, zero-shot or few-shot student run directory.

    Accepts "embedded:<name>" teachers, and a run's student.keras (a student that is
    not a Wide ResNet) or the run directory holding it. The model is not frozen.

    Returns:
        (network, config dict): a zskt_tf Wide ResNet (its output a dict with
        "logits"), or a networks.TappedNetwork around a .keras student, which
        returns the same dict; the run's config.json says how its inputs are
        scaled (dataset_info).
    """
    if embedded.is_embedded(str(model_dir)):
        model_dir = embedded.teacher_path(str(model_dir))
    model_dir = pathlib.Path(model_dir)
    keras_file = model_dir if is_keras_file(model_dir) else model_dir / STUDENT_MODEL
    if keras_file.is_file():
        config_path = keras_file.parent / runs.CONFIG_FILE
        if not config_path.is_file():
            raise UserError(
                f"{keras_file} is not in a zskt_tf run directory (no {runs.CONFIG_FILE}"
                " beside it to say how its inputs are scaled)"
            )
        from zskt_tf import networks

        model = load_keras(keras_file, "the student")
        return networks.TappedNetwork(model), runs.read_json(config_path)
    for weights_name in (STUDENT_WEIGHTS, TEACHER_WEIGHTS):
        if model_dir.is_file() or (model_dir / weights_name).is_file():
            break
    else:
        seeds = list(runs.seed_dirs(model_dir).values())
        hint = f"; pick one of its seeds, e.g. {seeds[0]}" if seeds else ""
        raise UserError(f"{model_dir} holds no student or teacher weights{hint}")
    weights, config = resolve_run(model_dir, weights_name)
    return _build_and_load(config, weights, "model"), config


def _build_and_load(config: dict, weights, what: str) -> keras.Model:
    """The WRN described by a run's config.json, with its weights loaded."""
    info = DatasetInfo.from_json(config["dataset_info"])
    model = wide_resnet(
        config["depth"],
        config["width"],
        info.num_classes,
        info.image_shape,
        name=f"{what}-wrn-{config['depth']}-{config['width']}",
    )
    load_weights_checked(model, weights, what)
    return model
