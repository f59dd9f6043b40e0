"""Losses against NumPy references, and the generator gradient path."""

import numpy as np
import pytest
import tensorflow as tf

import zskt_tf
from zskt_tf import losses


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _np_kl(teacher, student, temperature=1.0):
    log_t = _log_softmax(teacher / temperature)
    log_s = _log_softmax(student / temperature)
    return float((np.exp(log_t) * (log_t - log_s)).mean())


def _np_attention(a):
    energy = (a.astype(np.float64) ** 2).mean(axis=-1).reshape(a.shape[0], -1)
    return energy / np.linalg.norm(energy, axis=1, keepdims=True)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    return {
        "teacher": rng.normal(size=(16, 10)).astype(np.float32) * 3,
        "student": rng.normal(size=(16, 10)).astype(np.float32) * 3,
        "s_taps": [
            rng.normal(size=(16, s, s, c)).astype(np.float32)
            for s, c in ((8, 4), (4, 8), (2, 16))
        ],
        "t_taps": [
            rng.normal(size=(16, s, s, c)).astype(np.float32)
            for s, c in ((8, 8), (4, 16), (2, 32))
        ],
        "labels": rng.integers(0, 10, size=16),
    }


def test_kl_matches_numpy_and_is_the_batch_and_class_mean(batch):
    value = float(zskt_tf.kl_divergence(batch["teacher"], batch["student"]))
    assert value == pytest.approx(_np_kl(batch["teacher"], batch["student"]), rel=1e-5)
    # Per-sample KL (summed over classes, averaged over the batch) / num_classes.
    log_t = _log_softmax(batch["teacher"])
    per_sample = (np.exp(log_t) * (log_t - _log_softmax(batch["student"]))).sum(-1)
    assert value == pytest.approx(per_sample.mean() / 10, rel=1e-5)
    assert float(zskt_tf.kl_divergence(batch["teacher"], batch["teacher"])) == (
        pytest.approx(0.0, abs=1e-7)
    )


def test_kl_with_temperature(batch):
    value = float(zskt_tf.kl_divergence(batch["teacher"], batch["student"], 4.0))
    assert value == pytest.approx(
        _np_kl(batch["teacher"], batch["student"], 4.0), rel=1e-5
    )


def test_attention_map_matches_numpy(batch):
    tap = batch["s_taps"][0]
    result = zskt_tf.attention_map(tap).numpy()
    assert result.shape == (16, 64)
    np.testing.assert_allclose(result, _np_attention(tap), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(result, axis=1), 1.0, rtol=1e-5)


def test_attention_loss_is_mean_square_over_batch_and_positions(batch):
    s, t = batch["s_taps"][1], batch["t_taps"][1]
    expected = ((_np_attention(s) - _np_attention(t)) ** 2).mean()
    assert float(zskt_tf.attention_loss(s, t)) == pytest.approx(expected, rel=1e-5)


def test_student_and_generator_losses(batch):
    kl = _np_kl(batch["teacher"], batch["student"])
    attention = sum(
        ((_np_attention(s) - _np_attention(t)) ** 2).mean()
        for s, t in zip(batch["s_taps"], batch["t_taps"], strict=True)
    )
    value = zskt_tf.student_loss(
        batch["student"], batch["teacher"], batch["s_taps"], batch["t_taps"], beta=250
    )
    assert float(value) == pytest.approx(kl + 250 * attention, rel=1e-5)
    no_attention = zskt_tf.student_loss(
        batch["student"], batch["teacher"], batch["s_taps"], batch["t_taps"], beta=0
    )
    assert float(no_attention) == pytest.approx(kl, rel=1e-5)
    generator = zskt_tf.generator_loss(batch["student"], batch["teacher"])
    assert float(generator) == pytest.approx(-kl, rel=1e-5)


def test_kd_at_loss_matches_formula(batch):
    log_s = _log_softmax(batch["student"])
    cross_entropy = -log_s[np.arange(16), batch["labels"]].mean()
    kl_t4 = _np_kl(batch["teacher"], batch["student"], 4.0)
    attention = sum(
        ((_np_attention(s) - _np_attention(t)) ** 2).mean()
        for s, t in zip(batch["s_taps"], batch["t_taps"], strict=True)
    )
    expected = 0.1 * cross_entropy + 2 * 0.9 * 16 * kl_t4 + 1000 * attention
    value = zskt_tf.kd_at_loss(
        batch["labels"],
        batch["student"],
        batch["teacher"],
        batch["s_taps"],
        batch["t_taps"],
    )
    assert float(value) == pytest.approx(expected, rel=1e-5)


def test_mismatched_tap_counts_raise(batch):
    with pytest.raises(ValueError, match="taps"):
        losses.total_attention_loss(batch["s_taps"][:2], batch["t_taps"])


def test_generator_gradient_flows_through_frozen_teacher_and_student():
    teacher = zskt_tf.wide_resnet(10, 2, input_shape=(16, 16, 3))
    teacher.trainable = False
    student = zskt_tf.wide_resnet(10, 1, input_shape=(16, 16, 3))
    gen = zskt_tf.generator(z_dim=8, image_shape=(16, 16, 3))
    z = tf.random.normal((8, 8))

    def gradient(stop_teacher, stop_student):
        with tf.GradientTape() as tape:
            images = gen(z, training=True)
            t_logits = teacher(images, training=False)["logits"]
            s_logits = student(images, training=True)["logits"]
            if stop_teacher:
                t_logits = tf.stop_gradient(t_logits)
            if stop_student:
                s_logits = tf.stop_gradient(s_logits)
            loss = zskt_tf.generator_loss(s_logits, t_logits)
        return tape.gradient(loss, gen.trainable_variables)

    full = gradient(False, False)
    via_student = gradient(True, False)
    via_teacher = gradient(False, True)
    for name, grads in (("teacher", via_teacher), ("student", via_student)):
        norm = float(tf.linalg.global_norm(grads))
        assert norm > 1e-6, f"no generator gradient through the {name}"
    # The two paths add up to the full gradient: the teacher's share is really in it.
    for g_full, g_t, g_s in zip(full, via_teacher, via_student, strict=True):
        np.testing.assert_allclose(g_full.numpy(), (g_t + g_s).numpy(), atol=1e-5)
    assert teacher.trainable_variables == []


def test_logit_l1_distance_matches_numpy(batch):
    expected = np.abs(batch["teacher"] - batch["student"]).mean()
    actual = losses.logit_l1_distance(batch["teacher"], batch["student"])
    assert float(actual) == pytest.approx(float(expected), rel=1e-6)


def test_batch_norm_statistics_loss_matches_numpy():
    rng = np.random.default_rng(1)
    inputs = [rng.normal(1.0, 2.0, (8, 4, 4, 3)), rng.normal(size=(8, 2, 2, 5))]
    means = [rng.normal(size=3), rng.normal(size=5)]
    variances = [rng.uniform(0.5, 2.0, 3), rng.uniform(0.5, 2.0, 5)]
    expected = 0.0
    for x, mean, variance in zip(inputs, means, variances, strict=True):
        flat = x.reshape(-1, x.shape[-1])
        expected += np.linalg.norm(flat.mean(0) - mean)
        expected += np.linalg.norm(flat.var(0) - variance)  # biased variance
    actual = losses.batch_norm_statistics_loss(
        [tf.constant(x, tf.float32) for x in inputs],
        [tf.constant(m, tf.float32) for m in means],
        [tf.constant(v, tf.float32) for v in variances],
    )
    assert float(actual) == pytest.approx(expected, rel=1e-5)
    # Zero when the batch has exactly the running statistics.
    x = np.concatenate([np.full((4, 1, 1, 2), -1.0), np.full((4, 1, 1, 2), 3.0)])
    at_target = losses.batch_norm_statistics_loss([x], [np.ones(2)], [np.full(2, 4.0)])
    assert float(at_target) == pytest.approx(0.0, abs=1e-6)


def test_class_balance_loss_matches_numpy(batch):
    probabilities = np.exp(_log_softmax(batch["teacher"].astype(np.float64)))
    mean = probabilities.mean(axis=0)
    expected = (mean * np.log(mean)).sum()
    actual = losses.class_balance_loss(batch["teacher"])
    assert float(actual) == pytest.approx(expected, rel=1e-5)
    # Its minimum, -log K, is a batch spread evenly over the classes ...
    even = np.eye(10, dtype=np.float32)[np.arange(20) % 10] * 50.0
    assert float(losses.class_balance_loss(even)) == pytest.approx(
        -np.log(10), rel=1e-5
    )
    # ... and a batch of one confident class scores near its maximum, 0.
    single = np.tile(np.eye(10, dtype=np.float32)[3] * 50.0, (20, 1))
    assert float(losses.class_balance_loss(single)) == pytest.approx(0.0, abs=1e-5)
