"""Cases for test_distribution.py, each run in a fresh process.

A process can split its CPU into logical devices only before TensorFlow first uses
it, so every case runs as `python -m tests.distributed_cases CASE [ARGS]`: two
logical CPU devices, float64 models (there the single-device and the distributed
computation agree to ~1e-12; in float32, Adam's normalised steps amplify the
different summation order, see docs/RESULTS.md), and one JSON line on stdout.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402


def _setup(logical_devices: int = 2) -> None:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * logical_devices
    )
    import keras

    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")


def _mirrored():
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def _weights(*models):
    return [w.tolist() for model in models for w in model.get_weights()]


def _play(strategy, options: dict) -> dict:
    """3 outer iterations of a tiny game under strategy; losses and final weights."""
    import keras
    import numpy as np

    from zskt_tf import adversarial
    from zskt_tf.generator import generator
    from zskt_tf.wide_resnet import wide_resnet

    synchronized = strategy.num_replicas_in_sync > 1
    keras.utils.set_random_seed(0)
    with strategy.scope():
        teacher = wide_resnet(10, 2, 10, (32, 32, 3), name="teacher")
        teacher.trainable = False
        student = wide_resnet(10, 1, 10, (32, 32, 3), synchronized=synchronized)
        # A class-conditional generator also takes a one-hot of the 10 classes.
        inputs = 16 + 10 * bool(options.get("class_prior"))
        gen = generator(inputs, (32, 32, 3), synchronized=synchronized)
        optimizers = [adversarial.adam(lr, 5.0, False) for lr in (2e-3, 1e-3)]
        optimizers[0].build(student.trainable_variables)
        optimizers[1].build(gen.trainable_variables)
        copy = refreshed = None
        if options.get("student_ema"):
            copy, refreshed = (
                wide_resnet(10, 1, 10, (32, 32, 3), synchronized=synchronized)
                for _ in range(2)
            )
    config = adversarial.GameConfig(student_steps=3, **options)
    average = None
    if config.student_ema:
        from zskt_tf.averaging import WeightAverage

        average = WeightAverage(student, copy, config.student_ema, strategy, refreshed)
    step = adversarial.make_iteration_fn(
        teacher, student, gen, *optimizers, config, strategy
    )
    if config.replay_size:
        from zskt_tf import replay

        pool = replay.ReplayPool(config.replay_size, (32, 32, 3), strategy)
        game = replay.ReplayGame(
            teacher, student, gen, *optimizers, config, strategy, pool=pool, seed=3
        )
        step = game.iteration
    rng = np.random.default_rng(0)
    losses = []
    for iteration in range(3):
        z = tf.constant(rng.standard_normal((16, 16)))
        values = step(z, tf.constant(iteration, tf.int64))
        if average:
            average.update()
        losses.append({tag: float(value) for tag, value in values.items()})
    kept = []
    if average:
        # The average's BatchNorm statistics, measured on a batch of generator
        # images and (with a pool) a batch of the pool's, as the trainer draws it.
        from zskt_tf import distribution

        def run(model):
            forward = tf.function(
                lambda z: model(gen(z, training=True), training=True)["logits"]
            )
            on_images = tf.function(lambda x: model(x, training=True)["logits"])
            key = tf.constant(-4, tf.int64)
            for index in range(2):
                if config.replay_size and index:
                    index = tf.constant(index, tf.int64)
                    images = game.pool_batch(16, tf.float32, key, index)
                    distribution.run_on_global_batch(strategy, on_images, images)
                    continue
                z = tf.constant(rng.standard_normal((16, inputs)), tf.float32)
                distribution.run_on_global_batch(strategy, forward, z)
            return 2

        kept = [average.model, average.kept(run)]
    return {"losses": losses, "weights": _weights(student, gen, *kept)}


def _teacher_steps(strategy) -> dict:
    """3 SGD steps (momentum, PyTorch weight decay) on fixed batches."""
    import keras
    import numpy as np

    from zskt_tf import datasets, pipelines, supervised
    from zskt_tf.wide_resnet import wide_resnet

    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = wide_resnet(
            10, 1, 10, (32, 32, 3), synchronized=strategy.num_replicas_in_sync > 1
        )
        optimizer = supervised.sgd_optimizer(supervised.SGDRecipe(), model, False)
    step = supervised.make_train_step(model, optimizer, False, strategy=strategy)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 48)
    info = datasets.get_info("cifar10")
    dataset = pipelines.train_dataset(images, labels, info, 16, seed=0, epoch=0)
    if strategy.num_replicas_in_sync > 1:
        dataset = strategy.experimental_distribute_dataset(dataset)
    results = []
    for batch_images, batch_labels in dataset:
        loss, accuracy = step(batch_images, batch_labels, tf.constant(0.1))
        results.append([float(loss), float(accuracy)])
    return {"losses": results, "weights": _weights(model)}


def _distill_run(strategy, teacher_dir, data_dir, output_dir, stop_at=None):
    """A zero-shot run directory on tests.helpers' tiny image folder: 4 iterations,
    stopped at stop_at (None = not stopped)."""
    from zskt_tf import checkpoints, distill, model_io

    config = distill.DistillConfig(
        teacher=teacher_dir,
        output_dir=output_dir,
        dataset="folder",
        data_dir=data_dir,
        cache_dir=f"{data_dir}/../cache",
        student_depth=10,
        batch_size=16,
        z_dim=16,
        total_iterations=4,
        student_steps=2,
        eval_every=2,
        stop_at=stop_at,
    )
    try:
        results = distill.distill_one_seed(config, strategy=strategy)
    except checkpoints.Interrupted as interrupted:
        return {"interrupted": str(interrupted)}
    arrays = {}
    for name in (model_io.STUDENT_WEIGHTS, model_io.GENERATOR_WEIGHTS):
        from tests.helpers import weights_arrays

        arrays |= {
            f"{name}/{k}": v.tolist()
            for k, v in weights_arrays(f"{output_dir}/{name}").items()
        }
    return {"iterations": results["iterations"], "weights": arrays}


def checkpoint_portability(teacher_dir: str, data_dir: str, root: str) -> dict:
    """A run straight through on one device (<root>/a); the same run stopped at 2
    on two replicas and resumed on one device (<root>/b)."""
    default = tf.distribute.get_strategy()
    return {
        "straight": _distill_run(default, teacher_dir, data_dir, f"{root}/a"),
        "stopped": _distill_run(_mirrored(), teacher_dir, data_dir, f"{root}/b", 2),
        "resumed": _distill_run(default, teacher_dir, data_dir, f"{root}/b"),
    }


def multi_worker(index: str, ports: str) -> dict:
    """One of two workers (one CPU each) running 3 iterations of the game."""
    hosts = [f"localhost:{port}" for port in ports.split(",")]
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": int(index)}}
    )
    from zskt_tf import distribution

    strategy = distribution.make_strategy("multi_worker")
    return {**_play(strategy, {}), "chief": distribution.is_chief(strategy)}


# Every option beyond the paper at once: the priors (BN, balance, total variation),
# the l1 objective, the class-conditional generator with its masked adversarial
# term, and a replay pool (replicated: each replica holds all of it; the replay
# batch is drawn, augmented and cutmixed once for the global batch and split like a
# training batch), and the student's weight average (updated in cross-replica
# context after each iteration).
BEYOND = {
    "bn_prior": 0.5,
    "balance_prior": 2.0,
    "tv_prior": 0.3,
    "adversarial_loss": "l1",
    "class_prior": 0.5,
    "adversarial_mask": True,
    "replay_size": 40,
    "replay_steps": 2,
    "replay_mix": "cutmix",
    "student_ema": 0.5,
}


def games() -> dict:
    """In this one process (a process start and TensorFlow's import cost more than
    the cases): the paper's game and the game with every option beyond it, and 3
    teacher SGD steps, each on one device and on two replicas."""
    # One MirroredStrategy for all: a second one in a process clashes with the
    # first's collective operations.
    strategies = {"single": tf.distribute.get_strategy(), "mirrored": _mirrored()}
    return {
        "paper": {k: _play(s, {}) for k, s in strategies.items()},
        "beyond": {k: _play(s, BEYOND) for k, s in strategies.items()},
        "teacher_steps": {k: _teacher_steps(s) for k, s in strategies.items()},
    }


CASES = {
    "games": games,
    "checkpoint_portability": checkpoint_portability,
    "multi_worker": multi_worker,
}

if __name__ == "__main__":
    case, *arguments = sys.argv[1:]
    _setup(1 if case == "multi_worker" else 2)
    print(json.dumps(CASES[case](*arguments)))
