"""Test-set accuracy of a model in inference mode, on one device or distributed."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from zskt_tf import distribution, pipelines


class Accuracy:
    """Top-1 accuracy (0-1) of a model on a fixed evaluation set.

    Compiled once, called at every evaluation. Under a tf.distribute strategy with
    several replicas each batch is split over them and the correct predictions are
    summed (the model must have been built in the strategy's scope).
    """

    def __init__(
        self,
        model: keras.Model,
        images: np.ndarray,
        labels: np.ndarray,
        info,
        batch_size: int = 500,
        jit: bool = False,
        strategy=None,
    ):
        """Args: the model (returning a dict with "logits"), uint8 images and integer
        labels, the DatasetInfo that gives the normalisation, the batch size, XLA,
        and the strategy (default: the current context's)."""
        self.strategy = strategy or tf.distribute.get_strategy()
        self.num_examples = len(labels)
        dataset = pipelines.eval_dataset(images, labels, info, batch_size)
        if distribution.replicas(self.strategy) > 1:
            dataset = self.strategy.experimental_distribute_dataset(dataset)
        self.dataset = dataset

        def count_correct(batch_images, batch_labels):
            logits = model(batch_images, training=False)["logits"]
            predictions = tf.argmax(logits, axis=-1, output_type=batch_labels.dtype)
            return tf.reduce_sum(tf.cast(predictions == batch_labels, tf.int64))

        @tf.function(jit_compile=jit, reduce_retracing=True)
        def step(batch_images, batch_labels):
            per_replica = self.strategy.run(
                count_correct, args=(batch_images, batch_labels)
            )
            return distribution.global_sum(per_replica, self.strategy)

        self.step = step

    def __call__(self) -> float:
        correct = 0
        for batch_images, batch_labels in self.dataset:
            correct += int(self.step(batch_images, batch_labels))
        return correct / self.num_examples


def accuracy(
    model: keras.Model,
    images: np.ndarray,
    labels: np.ndarray,
    info,
    batch_size: int = 500,
) -> float:
    """Top-1 accuracy (0-1) over all images, model in inference mode, in one call.

    Args:
        model: a zskt_tf model returning a dict with "logits".
        images, labels: uint8 images and integer labels.
        info: the DatasetInfo that gives the normalisation.
        batch_size: evaluation batch size.
    """
    return Accuracy(model, images, labels, info, batch_size)()
