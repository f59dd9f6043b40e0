"""Augmented CIFAR-10 training images per second from zskt_tf.pipelines.train_dataset.

Usage: python bench/data_throughput.py --data_dir=../shared/datasets [--epochs=2]
"""

import json
import time

from absl import app, flags

from zskt_tf import datasets, pipelines

flags.DEFINE_string("data_dir", "../shared/datasets", "CIFAR-10 files (any layout).")
flags.DEFINE_string(
    "cache_dir", None, "Decoded-array cache (default ~/.cache/zskt_tf)."
)
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("epochs", 2, "Epochs to time after one warm-up epoch.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    data = datasets.load_dataset("cifar10", FLAGS.data_dir, FLAGS.cache_dir)
    images, labels = data.train_images, data.train_labels

    def run(epoch):
        count = 0
        for batch, _ in pipelines.train_dataset(
            images, labels, data.info, FLAGS.batch_size, seed=0, epoch=epoch
        ):
            count += int(batch.shape[0])
        return count

    run(0)  # warm-up: tracing and the first constant copies
    start = time.perf_counter()
    total = sum(run(epoch) for epoch in range(1, FLAGS.epochs + 1))
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "images": total,
                "seconds": round(seconds, 2),
                "images_per_second": round(total / seconds),
                "batch_size": FLAGS.batch_size,
                "augment": "random crop (pad 4) + horizontal flip, normalised float32",
            }
        )
    )


if __name__ == "__main__":
    app.run(main)
