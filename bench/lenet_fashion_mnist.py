"""A user's own Fashion-MNIST classifier, made the way a Keras user makes one.

Builds LeNet-5 (the classic data-free benchmark's teacher: conv 6@5x5, max-pool,
conv 16@5x5, max-pool, dense 120, 84, 10, ReLU, on 32x32 inputs) and LeNet-5-Half
(half the channels and units), trains the teacher with plain keras.Model.fit on the
official IDX files (pixels scaled to [0, 1], the 28x28 images zero-padded to 32x32)
and saves both as .keras files: lenet5.keras (trained) and lenet5_half.keras (the
student's architecture, untrained). No zskt_tf code is used here; the distillation
is then the library's, from those files (docs/RESULTS.md):

  python bench/lenet_fashion_mnist.py --data_dir=../shared/datasets/fashion-mnist \
      --output_dir=runs/fmnist
  zskt-tf-distill --teacher=runs/fmnist/lenet5.keras --input_scale=0,1 \
      --student=runs/fmnist/lenet5_half.keras --dataset=fashion_mnist \
      --data_dir=../shared/datasets/fashion-mnist --seeds=0,1,2 ...

With --student_with_data it instead trains LeNet-5-Half on the real training images
with the teacher's recipe (the student's accuracy when the data is there: the ceiling
a zero-shot student is measured against) and writes student_with_data.json; the
.keras files are not touched.
"""

import gzip
import json
import pathlib

import keras
import numpy as np
from absl import app, flags

flags.DEFINE_string(
    "data_dir", None, "Folder with the four Fashion-MNIST IDX .gz files."
)
flags.DEFINE_string("output_dir", "runs/fmnist", "Where to write the .keras files.")
flags.DEFINE_integer("epochs", 20, "Teacher epochs.")
flags.DEFINE_integer("seed", 0, "Seed of the teacher's initialisation and order.")
flags.DEFINE_bool(
    "student_with_data",
    False,
    "Train LeNet-5-Half on the real data instead (the ceiling); keep the .keras files.",
)
flags.mark_flag_as_required("data_dir")
FLAGS = flags.FLAGS


def read_idx(path: pathlib.Path) -> np.ndarray:
    """An IDX file (gzipped): a big-endian header, then the array."""
    with gzip.open(path) as file:
        data = file.read()
    dimensions = data[3]
    shape = [
        int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dimensions)
    ]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dimensions).reshape(shape)


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    root = pathlib.Path(FLAGS.data_dir)
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)))[..., None]  # 32x32x1
    return images.astype("float32") / 255.0, labels.astype("int64")


def lenet5(scale: float = 1.0, name: str = "lenet5") -> keras.Model:
    """LeNet-5 with ReLU; scale 0.5 halves every layer's channels and units."""

    def width(n):
        return int(n * scale)

    return keras.Sequential(
        [
            keras.Input((32, 32, 1)),
            keras.layers.Conv2D(width(6), 5, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(width(16), 5, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(width(120), activation="relu"),
            keras.layers.Dense(width(84), activation="relu"),
            keras.layers.Dense(10),
        ],
        name=name,
    )


def fit_and_evaluate(model, x_train, y_train, x_test, y_test) -> float:
    """The teacher's recipe: Adam 1e-3, batch 128, FLAGS.epochs; test accuracy."""
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, batch_size=128, epochs=FLAGS.epochs, verbose=2)
    return float(model.evaluate(x_test, y_test, verbose=0)[1])


def main(argv):
    del argv
    keras.utils.set_random_seed(FLAGS.seed)
    (x_train, y_train), (x_test, y_test) = load("train"), load("test")
    out = pathlib.Path(FLAGS.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if FLAGS.student_with_data:
        student = lenet5(0.5, "lenet5_half")
        accuracy = fit_and_evaluate(student, x_train, y_train, x_test, y_test)
        record = {"test_accuracy": accuracy, "epochs": FLAGS.epochs, "seed": FLAGS.seed}
        (out / "student_with_data.json").write_text(json.dumps(record) + "\n")
        print(f"LeNet-5-Half trained on the data: test accuracy {100 * accuracy:.2f}%")
        return
    teacher = lenet5()
    accuracy = fit_and_evaluate(teacher, x_train, y_train, x_test, y_test)
    teacher.save(out / "lenet5.keras")
    lenet5(0.5, "lenet5_half").save(out / "lenet5_half.keras")
    (out / "teacher.json").write_text(
        json.dumps({"test_accuracy": float(accuracy), "epochs": FLAGS.epochs}) + "\n"
    )
    print(f"LeNet-5 test accuracy {100 * accuracy:.2f}%; models in {out}")


if __name__ == "__main__":
    app.run(main)
