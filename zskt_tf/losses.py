"""ZSKT losses (Micaelli & Storkey, NeurIPS 2019, arXiv 1905.09768, Sec. 3: the
generator's L_G = -D_KL(T(x_p) || S(x_p)) and the student's L_S = D_KL(T(x_p) ||
S(x_p)) + beta * sum_l of attention differences), the few-shot KD+AT loss of its
baselines (Sec. 4.1) and the generator objectives of later data-free methods."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

# F.normalize's default epsilon in the authors' attention(): x / max(||x||, eps).
_NORMALIZE_EPSILON = 1e-12


def at_least_float32(tensor) -> tf.Tensor:
    """Half-precision activations (mixed precision) are promoted to float32 for the
    losses; float32 and float64 pass unchanged."""
    tensor = tf.convert_to_tensor(tensor)
    return tf.cast(tensor, tf.float32) if tensor.dtype.size < 4 else tensor


def kl_divergence(
    teacher_logits: tf.Tensor,
    student_logits: tf.Tensor,
    temperature: float = 1.0,
    per_example: bool = False,
) -> tf.Tensor:
    """Forward KL(teacher || student), averaged over batch *and* classes.

    The authors call PyTorch's ``kl_div`` with elementwise 'mean' reduction, so the
    value is the per-sample KL divided by the number of classes. That scale sets the
    balance against the attention term (beta = 250), so it is kept.
    per_example: the (batch,) values before the mean over the batch.
    """
    teacher_logits = at_least_float32(teacher_logits) / temperature
    student_logits = at_least_float32(student_logits) / temperature
    log_p_teacher = tf.nn.log_softmax(teacher_logits, axis=-1)
    log_p_student = tf.nn.log_softmax(student_logits, axis=-1)
    elementwise = tf.exp(log_p_teacher) * (log_p_teacher - log_p_student)
    if per_example:
        return tf.reduce_mean(elementwise, axis=-1)
    return tf.reduce_mean(elementwise)


def attention_map(activations: tf.Tensor) -> tf.Tensor:
    """Spatial attention of (B, H, W, C) activations: L2-normalised mean_c(A^2).

    Returns:
        (B, H*W) maps (float32 or wider) with unit L2 norm per sample.
    """
    activations = at_least_float32(activations)
    energy = tf.reduce_mean(tf.square(activations), axis=-1)
    energy = tf.reshape(energy, [tf.shape(energy)[0], -1])
    norm = tf.norm(energy, axis=-1, keepdims=True)
    return energy / tf.maximum(norm, _NORMALIZE_EPSILON)


def attention_loss(
    student_activations: tf.Tensor, teacher_activations: tf.Tensor
) -> tf.Tensor:
    """Mean over batch and positions of the squared attention-map difference.

    The paper writes an L2 norm; the authors' code takes this mean square.
    """
    difference = attention_map(student_activations) - attention_map(teacher_activations)
    return tf.reduce_mean(tf.square(difference))


def total_attention_loss(
    student_taps: Sequence[tf.Tensor], teacher_taps: Sequence[tf.Tensor]
) -> tf.Tensor:
    """Sum of attention_loss over matching taps (block1, block2, block3)."""
    if len(student_taps) != len(teacher_taps):
        raise ValueError(
            f"attention needs as many student taps ({len(student_taps)}) as teacher "
            f"taps ({len(teacher_taps)})"
        )
    return tf.add_n(
        [attention_loss(s, t) for s, t in zip(student_taps, teacher_taps, strict=True)]
    )


def student_loss(
    student_logits: tf.Tensor,
    teacher_logits: tf.Tensor,
    student_taps: Sequence[tf.Tensor],
    teacher_taps: Sequence[tf.Tensor],
    beta: float = 250.0,
    temperature: float = 1.0,
) -> tf.Tensor:
    """Zero-shot student loss L_S: KL + beta * sum of attention losses (ZSKT Sec. 3)."""
    loss = kl_divergence(teacher_logits, student_logits, temperature)
    if beta:
        loss += beta * total_attention_loss(student_taps, teacher_taps)
    return loss


def generator_loss(
    student_logits: tf.Tensor, teacher_logits: tf.Tensor, temperature: float = 1.0
) -> tf.Tensor:
    """Generator loss L_G: -KL(teacher || student); no attention term (ZSKT Sec. 3)."""
    return -kl_divergence(teacher_logits, student_logits, temperature)


def kd_at_loss(
    labels: tf.Tensor,
    student_logits: tf.Tensor,
    teacher_logits: tf.Tensor,
    student_taps: Sequence[tf.Tensor],
    teacher_taps: Sequence[tf.Tensor],
    alpha: float = 0.9,
    temperature: float = 4.0,
    beta: float = 1000.0,
) -> tf.Tensor:
    """Few-shot KD+AT loss (ZSKT Sec. 4.1; Zagoruyko & Komodakis, arXiv 1612.03928).

    (1 - alpha) * CE(labels) + 2 * alpha * T^2 * KL_mean(T) + beta * sum of attention
    losses, with KL_mean the batch-and-class mean of kl_divergence at temperature T.
    """
    cross_entropy = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(labels, tf.int32),
            logits=at_least_float32(student_logits),
        )
    )
    distillation = kl_divergence(teacher_logits, student_logits, temperature)
    loss = (1.0 - alpha) * cross_entropy
    loss += 2.0 * alpha * temperature**2 * distillation
    if beta:
        loss += beta * total_attention_loss(student_taps, teacher_taps)
    return loss


def logit_l1_distance(
    teacher_logits: tf.Tensor, student_logits: tf.Tensor, per_example: bool = False
) -> tf.Tensor:
    """Mean absolute difference of the logits (DFAD, Fang et al., 2019).

    Unlike the KL, its gradient does not vanish when both networks are saturated on
    the same class, so the generator keeps a signal.
    per_example: the (batch,) values before the mean over the batch.
    """
    difference = at_least_float32(teacher_logits) - at_least_float32(student_logits)
    if per_example:
        return tf.reduce_mean(tf.abs(difference), axis=-1)
    return tf.reduce_mean(tf.abs(difference))


def _identity(value):
    return value


def total_variation(images: tf.Tensor) -> tf.Tensor:
    """Mean absolute difference between vertically and between horizontally
    neighbouring pixels, summed over the two directions (the anisotropic total
    variation of DeepInversion's image prior, arXiv 1912.08795, as a mean rather
    than a sum so that its scale does not depend on the image size).

    A mean over the examples: weighted by the replica's share of the batch, the
    replicas' parts sum to the global batch's value.
    """
    images = at_least_float32(images)
    vertical = tf.reduce_mean(tf.abs(images[:, 1:] - images[:, :-1]))
    horizontal = tf.reduce_mean(tf.abs(images[:, :, 1:] - images[:, :, :-1]))
    return vertical + horizontal


def batch_norm_statistics_loss(
    bn_inputs: Sequence[tf.Tensor],
    moving_means: Sequence[tf.Tensor],
    moving_variances: Sequence[tf.Tensor],
    sum_over_replicas: Callable = _identity,
) -> tf.Tensor:
    """DeepInversion's feature regulariser, (arXiv 1912.08795),
    as used by DFQ (arXiv 2005.04136), CMI (arXiv 2105.08584) and Fast.

    Sum over BatchNorm layers of ||mu_b - running_mean||_2 + ||var_b - running_var||_2,
    where mu_b and var_b (biased) are the per-channel statistics of the layer's input
    over all axes but the last: plain L2 norms over channels, unweighted over layers.

    Args:
        bn_inputs: the input of each BatchNorm layer, (B, ..., C).
        moving_means, moving_variances: each layer's running statistics, (C,).
        sum_over_replicas: sums a tensor over replicas, so that the statistics are
            the global batch's under tf.distribute (identity on one device).
    """
    total = []
    for inputs, mean, variance in zip(
        bn_inputs, moving_means, moving_variances, strict=True
    ):
        inputs = at_least_float32(inputs)
        axes = list(range(len(inputs.shape) - 1))
        count = sum_over_replicas(tf.cast(tf.size(inputs[..., 0]), inputs.dtype))
        batch_mean = sum_over_replicas(tf.reduce_sum(inputs, axes)) / count
        squares = tf.reduce_sum(tf.square(inputs - batch_mean), axes)
        batch_variance = sum_over_replicas(squares) / count
        total.append(tf.norm(batch_variance - tf.cast(variance, inputs.dtype)))
        total.append(tf.norm(batch_mean - tf.cast(mean, inputs.dtype)))
    return tf.add_n(total)


def class_balance_loss(
    teacher_logits: tf.Tensor, sum_over_replicas: Callable = _identity
) -> tf.Tensor:
    """Negative entropy of the batch-mean teacher prediction, sum_k p_k log p_k
    (the information-entropy term of DAFL, arXiv 1904.01186, and DFQ; natural log).

    Minimised by the generator, it is lowest (-log K) when the batch covers the K
    classes evenly, so the generator cannot settle on one class. sum_over_replicas
    makes the mean the global batch's under tf.distribute.
    """
    probabilities = tf.nn.softmax(at_least_float32(teacher_logits))
    count = sum_over_replicas(tf.cast(tf.shape(probabilities)[0], probabilities.dtype))
    mean_prediction = sum_over_replicas(tf.reduce_sum(probabilities, axis=0)) / count
    return tf.reduce_sum(tf.math.xlogy(mean_prediction, mean_prediction))
