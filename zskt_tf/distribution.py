"""tf.distribute for every trainer: the strategy by name, and global-batch means.

Data parallel with the paper's *global* batch split across replicas. The math does
not depend on the number of replicas:
- each replica's loss is its share of the global-batch mean (local mean x local
  batch / global batch), so the summed gradients are the global batch's gradient,
  and zskt_tf.optimizers sums them before clipping;
- statistics that are not means over examples (BatchNorm statistics, the batch-mean
  prediction) are all-reduced, and each replica takes 1/replicas of the result;
- BatchNorm layers that normalise a training batch are synchronized when there is
  more than one replica (global-batch statistics);
- noise is drawn for the global batch on the host and split, so a run's z does not
  depend on the replica count.
"""

from __future__ import annotations

import tempfile

import tensorflow as tf

from zskt_tf.errors import UserError

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def make_strategy(name: str = "default", tpu: str | None = None):
    """A tf.distribute.Strategy by name.

    Args:
        name: "default" (the current context's strategy: one device, or the one a
            notebook entered), "mirrored" (every local GPU, or the CPU),
            "multi_worker" (the cluster in TF_CONFIG), "tpu".
        tpu: the TPU's address for "tpu" ("" or None: Colab's / the local TPU).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.NotFoundError) as error:
            raise UserError(
                f"no TPU found ({str(error).splitlines()[0]}); on Colab pick a TPU "
                "runtime, elsewhere pass --tpu=<name or grpc://address>"
            ) from None
        return tf.distribute.TPUStrategy(resolver)
    raise UserError(f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")


def replicas(strategy) -> int:
    return strategy.num_replicas_in_sync


def is_chief(strategy) -> bool:
    """Whether this process writes the outputs (the only one, but in multi-worker
    training, where it is the chief, or worker 0 when no chief is named)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0
    )


def checkpoint_dir(strategy, directory):
    """Where this process saves checkpoints: the run's directory on the chief; a
    throw-away directory on the other workers, which must save too (the save is a
    collective operation) but whose copies are not kept."""
    if is_chief(strategy):
        return directory
    return tempfile.mkdtemp(prefix="zskt_tf_worker_checkpoints_")


def split_global_batch(strategy, batch):
    """The global batch (a tensor or a nest of tensors) as per-replica slices."""
    count = replicas(strategy)
    if count == 1:
        return batch

    def slice_for(context):
        index = context.replica_id_in_sync_group

        def take(tensor):
            size = tensor.shape[0] // count
            return tensor[index * size : (index + 1) * size]

        return tf.nest.map_structure(take, batch)

    return strategy.experimental_distribute_values_from_function(slice_for)


def run_on_global_batch(strategy, fn, batch):
    """fn applied to the global batch split over the replicas (as in training),
    the outputs gathered back in order (one device: fn(batch)). Collective: every
    process of a multi-worker run must call it."""
    if replicas(strategy) == 1:
        return fn(batch)
    return gather(
        strategy, strategy.run(fn, args=(split_global_batch(strategy, batch),))
    )


def gather(strategy, per_replica):
    """The global batch of per-replica tensors, in replica order (cross-replica
    context; one device: unchanged)."""
    if replicas(strategy) == 1:
        return per_replica
    return strategy.gather(per_replica, axis=0)


def global_sum(per_replica, strategy):
    """Sums a nest of per-replica scalars over replicas (one device: unchanged)."""
    if replicas(strategy) == 1:
        return per_replica
    return tf.nest.map_structure(
        lambda value: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None),
        per_replica,
    )


def replica_share(local_batch) -> tf.Tensor:
    """local batch / global batch: the weight that turns this replica's mean over
    its examples into its part of the global-batch mean (1 on one device)."""
    context = tf.distribute.get_replica_context()
    local = tf.cast(local_batch, tf.float32)
    if context is None or context.num_replicas_in_sync == 1:
        return tf.ones([], tf.float32)
    return local / context.all_reduce(tf.distribute.ReduceOp.SUM, local)


def replica_fraction() -> float:
    """1 / number of replicas: each replica's part of a value it all-reduced."""
    context = tf.distribute.get_replica_context()
    return 1.0 / (context.num_replicas_in_sync if context is not None else 1)


def all_reduce_sum(value):
    """Differentiable sum over replicas (identity on one device)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)
