"""tf.data input pipelines: normalised evaluation batches and augmented training."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

CROP_PADDING = 4  # CIFAR-style random crop: pad 4 pixels, crop back (the authors' code)


def normalize(images: tf.Tensor, mean, std) -> tf.Tensor:
    """uint8 or [0, 255] float images -> (x / 255 - mean) / std, float32."""
    images = tf.cast(images, tf.float32) / 255.0
    return (images - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def augment_batch(images: tf.Tensor, seed: tf.Tensor, flip: bool = True) -> tf.Tensor:
    """Random crop with 4-pixel zero padding and horizontal flip, for a whole batch.

    Vectorised: one gather per axis for the per-image crop offsets, one select for the
    flips. Stateless, so a batch's augmentation is a pure function of its seed and a
    resumed run sees exactly the images it would have seen.

    Args:
        images: (B, H, W, C) uint8 images.
        seed: shape-[2] int seed for the stateless random ops.
        flip: also flip horizontally with probability 1/2.
    """
    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    pad = CROP_PADDING
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    offsets = tf.random.stateless_uniform(
        [batch, 2], seed=seed, minval=0, maxval=2 * pad + 1, dtype=tf.int32
    )
    rows = offsets[:, :1] + tf.range(height)[None, :]
    cols = offsets[:, 1:] + tf.range(width)[None, :]
    if flip:
        flips = tf.random.stateless_uniform([batch, 1], seed=seed + 1) < 0.5
        cols = tf.where(flips, tf.reverse(cols, axis=[1]), cols)
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(cropped, cols, axis=2, batch_dims=1)


def mix_batch(images: tf.Tensor, seed: tf.Tensor, mode: str) -> tf.Tensor:
    """Mixes each image with its neighbour in the batch (the batch rolled by one),
    for batches whose order is already random (draws from the replay pool).

    mixup: lam x image + (1 - lam) x partner. cutmix: a box covering a (1 - lam)
    share of the image (its sides sqrt(1 - lam) of the image's, centred uniformly,
    clipped at the border as in the CutMix paper) is taken from the partner. One lam
    ~ U(0, 1) per image (Beta(1, 1)); stateless, a pure function of the seed.

    Args:
        images: (B, H, W, C) float images.
        seed: shape-[2] int seed.
        mode: "mixup" or "cutmix".
    """
    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    partner = tf.roll(images, shift=1, axis=0)
    draws = tf.random.stateless_uniform([batch, 3], seed=seed, dtype=images.dtype)
    lam = draws[:, 0, None, None, None]
    if mode == "mixup":
        return lam * images + (1 - lam) * partner
    side = tf.sqrt(1 - lam)
    rows = tf.range(height, dtype=images.dtype)[None, :, None, None] + 0.5
    cols = tf.range(width, dtype=images.dtype)[None, None, :, None] + 0.5
    centre_row = draws[:, 1, None, None, None] * height
    centre_col = draws[:, 2, None, None, None] * width
    inside = (tf.abs(rows - centre_row) < side * height / 2) & (
        tf.abs(cols - centre_col) < side * width / 2
    )
    return tf.where(inside, partner, images)


def eval_dataset(images: np.ndarray, labels: np.ndarray, info, batch_size: int = 500):
    """Normalised (images, labels) batches in order, for evaluation."""
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
    dataset = dataset.map(
        lambda x, y: (normalize(x, info.mean, info.std), y),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of one epoch: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def train_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    info,
    batch_size: int,
    seed: int,
    epoch: int,
    start_batch: int = 0,
    augment: bool | None = None,
    end_batch: int | None = None,
) -> tf.data.Dataset:
    """One epoch of shuffled, augmented, normalised training batches.

    The order and the augmentation depend only on (seed, epoch, batch index), so a run
    resumed at batch k of an epoch continues with exactly the batches it would have
    had. The last partial batch is kept, like PyTorch's DataLoader default.

    Args:
        images, labels: the training split, uint8 (N, H, W, C) and int (N,).
        info: the DatasetInfo (normalisation, whether to augment).
        batch_size: examples per batch.
        seed, epoch: select the permutation and augmentation.
        start_batch: skip this many batches (resume mid-epoch).
        augment: override info.augment.
        end_batch: stop before this batch (a budget that ends inside the epoch).
            Loops should run a dataset to its end: destroying a tf.data iterator
            that has not reached its end blocked for up to a minute in TF 2.21.
    """
    augment = info.augment if augment is None else augment
    order = epoch_permutation(len(images), seed, epoch)
    num_batches = -(-len(images) // batch_size)
    images_t = tf.constant(images)
    labels_t = tf.constant(labels.astype(np.int64))
    order_t = tf.constant(order, tf.int32)

    def make_batch(batch_index):
        index = order_t[batch_index * batch_size : (batch_index + 1) * batch_size]
        batch_images = tf.gather(images_t, index)
        if augment:
            batch_seed = tf.stack(
                [tf.cast(seed * 100_003 + epoch, tf.int64), batch_index]
            )
            batch_images = augment_batch(batch_images, batch_seed)
        return normalize(batch_images, info.mean, info.std), tf.gather(labels_t, index)

    end_batch = num_batches if end_batch is None else min(end_batch, num_batches)
    dataset = tf.data.Dataset.range(start_batch, end_batch)
    dataset = dataset.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)
