"""Reuse of pseudo images (as in CMI, arXiv 2105.08584, and Fast): a replay pool and
the student steps drawn from it, beside the paper's game.

The paper never shows the student a pseudo image twice after its n_s steps on it;
DeepInversion, CMI and Fast keep every synthesised batch and train the student on
random batches of the whole pool, with crop + flip augmentation and the teacher's
outputs on the augmented batch. ReplayGame does that after each iteration's paper
steps: the new batch joins the pool, then `replay_steps` student steps on pool
batches (optionally mixed, --replay_mix: mixup or cutmix of each batch with itself
shuffled, the teacher's outputs on the mixed images). The pool is a variable, so it
is checkpointed and a resumed run draws the same batches (stateless sampling keyed
by seed, iteration and step).

Under tf.distribute the pool is replicated: every replica holds all of it (written
with the gathered global batch), the global replay batch is drawn once and split
over the replicas like a training batch.
"""

from __future__ import annotations

import tensorflow as tf
from absl import logging

from zskt_tf import distribution, pipelines
from zskt_tf.adversarial import AdversarialGame

# Pool images are stored in half precision: 6 KB per 32x32x3 image, and the student
# trains in float32 on them (the teacher's outputs are computed on what is stored).
POOL_DTYPE = tf.float16


class ReplayPool:
    """A ring buffer of the last `capacity` pseudo images, in checkpointed variables.

    Args:
        capacity: images kept (at least one batch).
        image_shape: (H, W, C).
        strategy: the tf.distribute strategy of the run (the pool is replicated).
    """

    def __init__(self, capacity: int, image_shape, strategy=None):
        strategy = strategy or tf.distribute.get_strategy()
        self.capacity = capacity
        options = dict(
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_WRITE,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        with strategy.scope():
            self.images = tf.Variable(
                tf.zeros([capacity, *image_shape], POOL_DTYPE),
                name="replay_images",
                **options,
            )
            self.count = tf.Variable(
                tf.zeros([], tf.int64), name="replay_count", **options
            )

    @property
    def nbytes(self) -> int:
        return int(self.images.shape.num_elements()) * POOL_DTYPE.size

    def log_memory(self) -> None:
        logging.info(
            "replay pool: %d images, %.0f MiB in memory (and in each checkpoint)",
            self.capacity,
            self.nbytes / 2**20,
        )

    def checkpointables(self) -> dict:
        return {"replay_images": self.images, "replay_count": self.count}

    def add(self, images) -> None:
        """Writes a batch over the oldest images (cross-replica context)."""
        count = tf.cast(tf.shape(images)[0], tf.int64)
        index = (self.count + tf.range(count, dtype=tf.int64)) % self.capacity
        # scatter_update, not scatter_nd_update: a MirroredVariable has only the
        # former, and it writes the rows in place on every replica.
        self.images.scatter_update(tf.IndexedSlices(tf.cast(images, POOL_DTYPE), index))
        self.count.assign_add(count)

    def sample(self, batch_size, seed):
        """A batch drawn uniformly (with replacement) from the images written so
        far; seed: a shape-[2] int64 tensor."""
        size = tf.minimum(self.count, self.capacity)
        index = tf.random.stateless_uniform(
            [batch_size], seed, minval=0, maxval=size, dtype=tf.int64
        )
        return tf.gather(self.images, index)


class ReplayGame(AdversarialGame):
    """The paper's iteration, then `config.replay_steps` student steps on batches
    from the replay pool (see the module docstring). Takes AdversarialGame's
    arguments and the pool; seed keys the replay batches and their augmentation."""

    def __init__(self, *args, pool: ReplayPool, seed: int = 0, **kwargs):
        self.pool, self.seed = pool, seed
        super().__init__(*args, **kwargs)

    def pool_batch(self, batch_size, dtype, key, step):
        """A global batch as the pool steps train on: drawn from the pool with seed
        [key, step], cropped and flipped with [key + 2, step], then mixed
        (--replay_mix) with [key + 1, step]."""
        images = self.pool.sample(batch_size, tf.stack([key, step]))
        images = pipelines.augment_batch(
            tf.cast(images, dtype), tf.stack([key + 2, step])
        )
        if self.config.replay_mix != "none":
            images = pipelines.mix_batch(
                images, tf.stack([key + 1, step]), self.config.replay_mix
            )
        return images

    def _after_student_steps(self, iteration, pseudo, batch_size, dtype) -> dict:
        strategy = self.strategy
        batch = distribution.gather(strategy, pseudo)
        self.pool.add(batch)
        loss = kl = tf.zeros([], dtype)
        # Seeds [key, step] for the draw, [key + 1, step] for the mix and
        # [key + 2, step] for the augmentation (which also uses [key + 3, step + 1]);
        # keys are multiples of 4, so no two draws of the run share a seed.
        key = (self.seed * 1_000_003 + iteration) * 4
        temperature = self.config.replay_temperature
        temperature = None if temperature == 1.0 else temperature
        for step in tf.range(self.config.replay_steps, dtype=tf.int64):
            images = self.pool_batch(batch_size, batch.dtype, key, step)
            images = distribution.split_global_batch(strategy, images)
            targets, taps = strategy.run(self.teacher_targets, args=(images,))
            per_replica = strategy.run(
                self._student_step, args=(images, targets, taps, temperature)
            )
            loss, kl, _ = distribution.global_sum(per_replica, strategy)
        return {"train/replay_loss": loss, "train/replay_kl": kl}
