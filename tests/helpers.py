"""Tiny datasets and program runners shared by the tests."""

import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]

# How long a test waits for a child process: a guard against hangs, not a speed check.
# Machines here differ 2-3x in speed and may be loaded (a 240 s guard once fired on
# a healthy run under load); CI's own limit is 20 minutes.
HANG_GUARD_SECONDS = 900


def write_tiny_folder(
    root: pathlib.Path,
    classes: int = 3,
    train_per_class: int = 8,
    test_per_class: int = 4,
    size: int = 16,
) -> pathlib.Path:
    """An image-folder dataset whose classes differ by colour, so it can be learnt."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label in range(classes):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                pixels = rng.integers(0, 120, (size, size, 3))
                pixels[..., label % 3] += 120
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index}.png")
    return root


def run_program(
    name: str, *args: str, timeout: float = HANG_GUARD_SECONDS, check: bool = True
):
    """Runs bin/<name> with this interpreter; returns the CompletedProcess."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, str(REPO / "bin" / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{name} exited {result.returncode}\nstdout:\n{result.stdout}\n"
            f"stderr:\n{result.stderr[-4000:]}"
        )
    return result


def user_error(name: str, *args: str) -> str:
    """Runs bin/<name> on bad input; asserts the user-error exit (status 2, no
    traceback) and returns stderr for the caller to check the message."""
    result = run_program(name, *args, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    return result.stderr


def start_program(name: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, str(REPO / "bin" / name), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def weights_arrays(path) -> dict:
    import h5py

    arrays = {}
    with h5py.File(path, "r") as file:
        file.visititems(
            lambda name, item: (
                arrays.__setitem__(name, item[()])
                if isinstance(item, h5py.Dataset)
                else None
            )
        )
    return arrays


def tiny_teacher(
    base: pathlib.Path, epochs: int = 1, test_per_class: int = 4, **teacher_overrides
):
    """A tiny image-folder dataset and a WRN-10-2 teacher trained on it.

    Returns:
        (dataset root, ImageData, teacher run directory).
    """
    from zskt_tf import datasets, teacher

    root = write_tiny_folder(base / "data", test_per_class=test_per_class)
    data = datasets.load_dataset("folder", root, base / "cache")
    teacher_dir = base / "teacher"
    config = teacher.TeacherConfig(
        output_dir=str(teacher_dir),
        dataset="folder",
        depth=10,
        width=2,
        epochs=epochs,
        batch_size=8,
        **teacher_overrides,
    )
    teacher.train_teacher(config, data)
    return root, data, teacher_dir


def tiny_distill_config(tiny, out, **settings):
    """A zero-shot run into out from tiny_teacher's teacher, evaluated on its image
    folder: a WRN-10-1 student, batch 8, z of size 16; settings override any field."""
    from zskt_tf import configs

    _, _, teacher_dir = tiny
    values = dict(
        teacher=str(teacher_dir),
        output_dir=str(out),
        dataset="folder",
        student_depth=10,
        student_width=1,
        batch_size=8,
        z_dim=16,
    )
    return configs.DistillConfig(**(values | settings))
