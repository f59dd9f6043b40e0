"""Transition curves and mean transition error (ZSKT, arXiv 1905.09768,
Sec. 4.4, "Measuring belief match near decision boundaries", and Figure 4).

An attacked net A is pushed by plain gradient steps towards each other class j; the
curves follow p_j under A and under an observed net B. Nets that match each other's
beliefs near the data (low MTE) move together.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from zskt_tf import networks, pipelines, plots
from zskt_tf.configs import check_seed
from zskt_tf.errors import UserError


def load_nets(
    net_a: str, net_b: str, dataset=None, data_dir=None, cache_dir=None
) -> tuple:
    """Nets A and B from their run directories (Wide ResNets or .keras students)
    and the test data in their input convention (the one A's run records).

    Returns:
        (net A, net B, the ImageData, its DatasetInfo with A's normalisation, the
        dataset's name).

    Raises:
        UserError: no dataset known, or nets that scale their inputs differently.
    """
    import dataclasses

    from zskt_tf import datasets, model_io

    a, config_a = model_io.load_network(net_a)
    b, config_b = model_io.load_network(net_b)
    dataset = dataset or config_a.get("dataset")
    if not dataset:
        raise UserError(f"{net_a} was distilled without a test set: pass --dataset")
    info_a, info_b = (
        datasets.DatasetInfo.from_json(c["dataset_info"]) for c in (config_a, config_b)
    )
    if (info_a.mean, info_a.std) != (info_b.mean, info_b.std):
        raise UserError(
            f"{net_a} and {net_b} scale their inputs differently; compare nets of "
            "one run (a student and its teacher)"
        )
    data = datasets.load_dataset(dataset, data_dir, cache_dir)
    data = datasets.fit_to_shape(data, info_a.image_shape, "net A")
    info = dataclasses.replace(data.info, mean=info_a.mean, std=info_a.std)
    return a, b, data, info, dataset


def agreeing_images(net_a, net_b, images, labels, info, n_images: int, seed: int = 0):
    """The first n_images of the seed-shuffled test set on which A and B agree.

    Returns:
        (normalised images (n, H, W, C) float32, true labels (n,)).
    """
    order = np.random.default_rng(seed).permutation(len(images))
    chosen_images, chosen_labels, found = [], [], 0
    for start in range(0, len(order), 500):
        index = order[start : start + 500]
        batch = pipelines.normalize(images[index], info.mean, info.std)
        agree = (
            tf.argmax(net_a(batch, training=False)["logits"], -1)
            == tf.argmax(net_b(batch, training=False)["logits"], -1)
        ).numpy()
        chosen_images.append(batch.numpy()[agree])
        chosen_labels.append(labels[index][agree])
        found += int(agree.sum())
        if found >= n_images:
            break
    if found < n_images:
        raise UserError(
            f"only {found} of {len(images)} test images are classified alike by both "
            f"nets; {n_images} needed. Lower --n_images or check the nets"
        )
    return (
        np.concatenate(chosen_images)[:n_images],
        np.concatenate(chosen_labels)[:n_images],
    )


def target_classes(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(n, C-1) targets j = (label + 1 + i) mod C, i = 0..C-2, as the authors take."""
    offsets = np.arange(1, num_classes)
    return (labels[:, None] + offsets[None, :]) % num_classes


def make_attack_step(net_a, net_b, step_size: float):
    """Compiled: (x, targets) -> (x after one step, p_target under A, under B).

    The probabilities are measured before the update. The step descends the
    per-image cross entropy of A towards the target (summed, so each image moves by
    its own gradient), with no sign and no clipping.
    """

    @tf.function(reduce_retracing=True)
    def attack_step(x, targets):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits_a = tf.cast(net_a(x, training=False)["logits"], tf.float32)
            loss = tf.reduce_sum(
                tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=targets, logits=logits_a
                )
            )
        gradient = tape.gradient(loss, x)
        logits_b = tf.cast(net_b(x, training=False)["logits"], tf.float32)
        p_a = tf.gather(tf.nn.softmax(logits_a), targets, batch_dims=1)
        p_b = tf.gather(tf.nn.softmax(logits_b), targets, batch_dims=1)
        return x - step_size * gradient, p_a, p_b

    return attack_step


def transition_curves(
    net_a,
    net_b,
    images,
    labels,
    info,
    n_images: int = 1000,
    steps: int = 100,
    step_size: float = 1.0,
    batch_size: int = 900,
    seed: int = 0,
) -> dict:
    """Transition curves of A (attacked) and B (observed), and their MTE.

    Args:
        net_a, net_b: zskt_tf models (dict outputs) with the same class count.
        images, labels: the uint8 test split and its labels.
        info: DatasetInfo for the normalisation.
        n_images: agreeing images to use (paper: 1000).
        steps: K, the number of recorded steps (paper: 100).
        step_size: xi (paper: 1).
        batch_size: adversarial images per compiled batch.

    Returns:
        {"p_a", "p_b": (n, C-1, K) arrays, "labels", "targets", "mte"}.
    """
    check_seed(seed)
    classes_a, classes_b = networks.class_count(net_a), networks.class_count(net_b)
    if classes_a != classes_b:
        raise UserError(
            f"the nets predict different class counts: {classes_a} vs {classes_b}"
        )
    shape_a, shape_b = (tuple(n.inputs[0].shape[1:]) for n in (net_a, net_b))
    if shape_a != shape_b:
        raise UserError(f"the nets take different inputs: {shape_a} vs {shape_b}")
    if tuple(images.shape[1:]) != shape_a:
        raise UserError(
            f"the test images are {tuple(images.shape[1:])} but the nets take "
            f"{shape_a}; use the nets' dataset"
        )
    x, true_labels = agreeing_images(net_a, net_b, images, labels, info, n_images, seed)
    targets = target_classes(true_labels, classes_a)
    n, per_image = targets.shape
    flat_x = np.repeat(x, per_image, axis=0)
    flat_targets = targets.reshape(-1).astype(np.int32)
    attack_step = make_attack_step(net_a, net_b, step_size)
    p_a = np.zeros((n * per_image, steps), np.float32)
    p_b = np.zeros_like(p_a)
    for start in range(0, len(flat_x), batch_size):
        batch = tf.constant(flat_x[start : start + batch_size])
        batch_targets = tf.constant(flat_targets[start : start + batch_size])
        for k in range(steps):
            batch, a, b = attack_step(batch, batch_targets)
            p_a[start : start + len(a), k] = a.numpy()
            p_b[start : start + len(b), k] = b.numpy()
    p_a, p_b = p_a.reshape(n, per_image, steps), p_b.reshape(n, per_image, steps)
    return {
        "p_a": p_a,
        "p_b": p_b,
        "labels": true_labels,
        "targets": targets,
        "mte": mean_transition_error(p_a, p_b),
    }


def mean_transition_error(p_a: np.ndarray, p_b: np.ndarray) -> float:
    """Mean over images, target classes and steps of |p_j^A - p_j^B|."""
    return float(np.mean(np.abs(p_a - p_b)))


def save_plot(
    curves: dict, path, name_a: str = "A (attacked)", name_b: str = "B (observed)"
) -> None:
    """Figure-4-style plot: mean p_j of both nets against k with a +-2 SEM band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 4))
    for key, name in (("p_a", name_a), ("p_b", name_b)):
        values = curves[key].reshape(-1, curves[key].shape[-1])
        mean = values.mean(0)
        sem = (
            values.std(0, ddof=1) / np.sqrt(len(values))
            if len(values) > 1
            else 0 * mean
        )
        steps = np.arange(len(mean))
        axis.plot(steps, mean, label=name)
        axis.fill_between(steps, mean - 2 * sem, mean + 2 * sem, alpha=0.25)
    axis.set(
        xlabel="adversarial step k",
        ylabel="p_j (target class)",
        title=f"transition curves, MTE {curves['mte']:.3f}",
        ylim=(0, 1),
    )
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    plots.save_figure(figure, path)
