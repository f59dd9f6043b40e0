"""Test-set accuracy of a model in inference mode."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from zskt_tf import pipelines


def make_predict_fn(model: keras.Model, jit_compile: bool = False):
    """A compiled inference-mode function from normalised images to logits."""

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def predict(images):
        return model(images, training=False)["logits"]

    return predict


def accuracy(
    model: keras.Model,
    images: np.ndarray,
    labels: np.ndarray,
    info,
    batch_size: int = 500,
    predict_fn=None,
) -> float:
    """Top-1 accuracy (0-1) over all images, model in inference mode.

    Args:
        model: a zskt_tf model returning a dict with "logits".
        images, labels: uint8 images and integer labels.
        info: the DatasetInfo that gives the normalisation.
        batch_size: evaluation batch size.
        predict_fn: a reusable make_predict_fn(model) to avoid retracing.
    """
    predict = predict_fn or make_predict_fn(model)
    correct = 0
    for batch_images, batch_labels in pipelines.eval_dataset(
        images, labels, info, batch_size
    ):
        predictions = tf.argmax(predict(batch_images), axis=-1)
        correct += int(tf.reduce_sum(tf.cast(predictions == batch_labels, tf.int32)))
    return correct / len(labels)
