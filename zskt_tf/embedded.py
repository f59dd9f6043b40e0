"""Small assets shipped inside the package: a CIFAR-10 teacher and a test subset.

They are addressed by name in every program: ``--teacher=embedded:cifar10-wrn-16-2``
and ``--dataset=embedded:cifar10-test-2k``. docs/ASSETS.md says where they came from
and scripts/make_assets.py regenerates them.
"""

from __future__ import annotations

import importlib.resources
import pathlib

import numpy as np

from zskt_tf.errors import UserError

PREFIX = "embedded:"
TEACHERS = {"cifar10-wrn-16-2": "cifar10-wrn-16-2"}  # name -> assets/ subdirectory
DATASETS = {
    "cifar10-test-2k": ("cifar10-test-2k.npz", "cifar10")
}  # name -> (file, base)


def is_embedded(name) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def assets_dir() -> pathlib.Path:
    return pathlib.Path(str(importlib.resources.files("zskt_tf") / "assets"))


def _lookup(name: str, table: dict, what: str):
    key = name[len(PREFIX) :]
    if key not in table:
        valid = ", ".join(PREFIX + k for k in sorted(table))
        raise UserError(f"unknown embedded {what} {name!r}; available: {valid}")
    return table[key]


def dataset_entry(name: str) -> tuple[str, str]:
    """(file name in assets/, registry dataset it is drawn from) of a dataset name."""
    return _lookup(name, DATASETS, "dataset")


def teacher_path(name: str) -> pathlib.Path:
    """The package directory of an embedded teacher (a zskt-tf-teacher run dir)."""
    path = assets_dir() / _lookup(name, TEACHERS, "teacher")
    if not (path / "teacher.weights.h5").is_file():
        raise UserError(
            f"embedded teacher {name} is missing from this installation "
            f"({path}); reinstall zskt_tf"
        )
    return path


def load_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """An embedded evaluation set's uint8 images and int64 labels.

    zskt_tf.datasets.load_dataset wraps them as ImageData (with an empty training
    split) under the registry entry of dataset_entry(name)[1].
    """
    filename, _ = dataset_entry(name)
    path = assets_dir() / filename
    if not path.is_file():
        raise UserError(
            f"embedded dataset {name} is missing from this installation "
            f"({path}); reinstall zskt_tf"
        )
    with np.load(path) as arrays:
        return arrays["images"], arrays["labels"].astype(np.int64)
