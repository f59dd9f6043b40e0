"""Teacher training images/s: zskt_tf's step and input pipeline vs a minimal Keras step.

Both train the same WRN at batch 128 in the same process. The baseline is the
smallest hand-written Keras 3 loop (tf.function: forward, cross entropy, gradient,
SGD apply) on one pre-built batch, so it pays nothing for data. zskt_tf's number
includes the real pipeline (shuffle, crop + flip, normalise) and the L2 term.

Usage: python bench/teacher_speed.py [--archs=16-1,16-2,40-2] [--steps=20]
"""

import json
import os
import platform

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from bench.common import time_per_call
from zskt_tf import datasets, pipelines, supervised
from zskt_tf.wide_resnet import wide_resnet

flags.DEFINE_list("archs", ["16-1", "16-2", "40-2"], "WRN depth-width pairs.")
flags.DEFINE_integer("steps", 20, "Timed steps per measurement.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
FLAGS = flags.FLAGS


def baseline_images_per_second(depth, width, batch_size, steps):
    model = wide_resnet(depth, width)
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    images = tf.random.normal((batch_size, 32, 32, 3))
    labels = tf.random.uniform((batch_size,), 0, 10, tf.int64)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = model(images, training=True)["logits"]
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(
                    labels, logits, from_logits=True
                )
            )
        optimizer.apply(
            tape.gradient(loss, model.trainable_variables), model.trainable_variables
        )
        return loss

    return batch_size / time_per_call(lambda: step().numpy(), steps, warmup=2)


def zskt_images_per_second(depth, width, batch_size, steps):
    info = datasets.get_info("cifar10")
    rng = np.random.default_rng(0)
    count = batch_size * (steps + 3)
    images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, count).astype(np.int64)
    model = wide_resnet(depth, width)
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    train_step = supervised.make_train_step(model, optimizer, 5e-4, jit=False)
    batches = iter(pipelines.train_dataset(images, labels, info, batch_size, 0, 0))
    lr = tf.constant(0.1)

    def step():
        batch_images, batch_labels = next(batches)
        train_step(batch_images, batch_labels, lr)[0].numpy()

    return batch_size / time_per_call(step, steps, warmup=2)


def main(argv):
    del argv
    rows = []
    for arch in FLAGS.archs:
        depth, width = (int(v) for v in arch.split("-"))
        # Alternate the order so neither side always runs on a warmer machine.
        ours = zskt_images_per_second(depth, width, FLAGS.batch_size, FLAGS.steps)
        base = baseline_images_per_second(depth, width, FLAGS.batch_size, FLAGS.steps)
        rows.append(
            {
                "model": f"WRN-{depth}-{width}",
                "zskt_tf_images_per_second": round(ours, 1),
                "minimal_keras_images_per_second": round(base, 1),
                "ratio": round(ours / base, 3),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
            }
        )
    )


if __name__ == "__main__":
    app.run(main)
