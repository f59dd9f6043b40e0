"""Regenerates the embedded assets in zskt_tf/assets (see docs/ASSETS.md).

Usage:
  python scripts/make_assets.py \
      --teacher_dir=runs/teachers/wrn-16-2-onecycle-5ep-ls0.1 \
      --data_dir=../shared/datasets/cifar10-jpeg.tar.gz
"""

import pathlib
import shutil

import numpy as np
from absl import app, flags

from zskt_tf import datasets, embedded, runs

flags.DEFINE_string("teacher_dir", None, "zskt-tf-teacher run of WRN-16-2 on CIFAR-10.")
flags.DEFINE_string("data_dir", None, "CIFAR-10 files (any supported layout).")
flags.DEFINE_integer("per_class", 200, "Test images per class in the subset.")
flags.DEFINE_integer("seed", 0, "Selects the subset.")
flags.mark_flags_as_required(["teacher_dir", "data_dir"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    assets = pathlib.Path(__file__).resolve().parents[1] / "zskt_tf" / "assets"
    teacher_out = assets / embedded.TEACHERS["cifar10-wrn-16-2"]
    teacher_out.mkdir(parents=True, exist_ok=True)
    source = pathlib.Path(FLAGS.teacher_dir)
    shutil.copy(source / "teacher.weights.h5", teacher_out / "teacher.weights.h5")
    config = runs.read_json(source / "config.json")
    # Machine-specific paths mean nothing inside the package.
    for key in ("output_dir", "data_dir", "cache_dir"):
        config[key] = None
    runs.write_json(teacher_out / "config.json", config)
    results = runs.read_json(source / "results.json")
    runs.write_json(teacher_out / "results.json", results)

    data = datasets.load_dataset("cifar10", FLAGS.data_dir)
    images, labels = datasets.few_shot_subset(
        data.test_images, data.test_labels, FLAGS.per_class, FLAGS.seed
    )
    filename = embedded.DATASETS["cifar10-test-2k"][0]
    np.savez_compressed(
        assets / filename, images=images, labels=labels.astype(np.uint8)
    )
    for path in sorted(assets.rglob("*")):
        if path.is_file():
            print(f"{path.relative_to(assets)}: {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    app.run(main)
