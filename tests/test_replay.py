"""Reuse of pseudo images: the replay pool, exact resume with it, and the generator
objectives from later methods against NumPy. The pool on two replicas is tested with
every other option beyond the paper in test_distribution.py."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from scipy.special import log_softmax

from tests.helpers import tiny_distill_config, tiny_teacher, weights_arrays
from tests.test_adversarial import _clone, _networks
from zskt_tf import adversarial, checkpoints, distill, model_io, replay
from zskt_tf.errors import UserError
from zskt_tf.generator import generator as build_generator
from zskt_tf.wide_resnet import wide_resnet


def test_the_pool_keeps_the_last_images_and_draws_only_written_ones():
    pool = replay.ReplayPool(10, (2, 2, 1))
    batches = [np.full((4, 2, 2, 1), value, np.float32) for value in (1, 2, 3)]
    pool.add(batches[0])
    assert int(pool.count) == 4 and pool.images.dtype == tf.float16
    # Only the 4 images written so far can be drawn; the same seed, the same draw.
    drawn = pool.sample(64, tf.constant([3, 4], tf.int64)).numpy()
    assert set(np.unique(drawn)) == {1.0}
    for batch in batches[1:]:
        pool.add(batch)
    # 12 written into 10 places: the ring holds the last 10 (the oldest two of the
    # first batch were overwritten by the third batch).
    stored = pool.images.numpy()[:, 0, 0, 0]
    np.testing.assert_array_equal(stored, [3, 3, 1, 1, 2, 2, 2, 2, 3, 3])
    assert int(pool.count) == 12
    first = pool.sample(200, tf.constant([5, 6], tf.int64)).numpy()
    again = pool.sample(200, tf.constant([5, 6], tf.int64)).numpy()
    other = pool.sample(200, tf.constant([5, 7], tf.int64)).numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert set(np.unique(first)) == {1.0, 2.0, 3.0}
    assert pool.nbytes == 10 * 4 * 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_teacher(tmp_path_factory.mktemp("replay"))


def test_a_replay_run_resumes_exactly(tiny, tmp_path):
    _, data, _ = tiny
    config = tiny_distill_config(
        tiny,
        tmp_path / "straight",
        total_iterations=4,
        student_steps=1,
        eval_every=2,
        checkpoint_every=1,
        replay_size=20,
        replay_steps=2,
        replay_mix="cutmix",
        bn_prior=1.0,
        class_prior=0.5,
        adversarial_mask=True,
        student_optimizer="sgd",
        student_lr=0.05,
        student_weight_decay=1e-4,
        student_ema=0.5,
    )
    straight = distill.distill_one_seed(config, data)
    assert {"replay_loss", "replay_kl", "class_loss"} <= set(straight["history"][-1])
    # The saved student is the average of the live weights (--student_ema), which
    # the checkpoint holds too, so the resumed run's saved student must match.
    assert "test_accuracy_live" in straight["history"][-1]
    chunked = dataclasses.replace(config, output_dir=str(tmp_path / "chunked"))
    with pytest.raises(checkpoints.StoppedAt):
        distill.distill_one_seed(dataclasses.replace(chunked, stop_at=3), data)
    # The pool is in the checkpoint: 3 batches of 8 written into 20 places.
    reader = tf.train.load_checkpoint(str(tmp_path / "chunked" / "checkpoints"))
    names = reader.get_variable_to_shape_map()
    pool_name = next(name for name in names if name.startswith("replay_images"))
    assert names[pool_name] == [20, 16, 16, 3]
    count = next(name for name in names if name.startswith("replay_count"))
    assert reader.get_tensor(count) == 24
    assert any(name.startswith("student_average") for name in names)
    resumed = distill.distill_one_seed(chunked, data)
    assert resumed["history"] == straight["history"]
    for name in ("student.weights.h5", "generator.weights.h5"):
        expected = weights_arrays(tmp_path / "straight" / name)
        actual = weights_arrays(tmp_path / "chunked" / name)
        for key in expected:
            np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)
    with pytest.raises(UserError, match="replay needs both"):
        dataclasses.replace(config, replay_steps=0).validate()
    with pytest.raises(UserError, match="must hold at least one batch"):
        dataclasses.replace(config, replay_size=4).validate()


def test_the_average_measures_its_statistics_on_pool_batches(tiny, tmp_path):
    from zskt_tf import networks
    from zskt_tf.zero_shot import BN_REFRESH_BATCHES, REFRESH_KEY, ZeroShotTrainer

    _, data, _ = tiny
    config = tiny_distill_config(
        tiny,
        tmp_path / "run",
        student_steps=1,
        replay_size=20,
        replay_steps=1,
        replay_mix="cutmix",
        student_ema=0.5,
        seed=2,
    )

    def trained():  # two iterations; the same every time
        trainer = ZeroShotTrainer(config, distill.check_inputs(config, data))
        for step, z in enumerate(trainer.batches(0, 2)):
            trainer.train_step(z, step)
        return trainer

    def statistics(model):
        return [
            (layer.moving_mean.numpy(), layer.moving_variance.numpy())
            for layer in networks.batch_norm_layers(model).values()
        ]

    trainer = trained()
    assert trainer.refresh_from == "pool"
    pool_before = trainer.pool.images.numpy()
    measured = statistics(trainer.kept_student)
    # The same figures from the pool steps' own batches (crop+flip and cutmix
    # included), keyed by the refresh key, on a second run of the same iterations.
    other_run = trained()
    key = tf.constant(REFRESH_KEY - 4 * config.seed, tf.int64)

    def on_pool(model):
        for index in range(BN_REFRESH_BATCHES):
            batch = other_run.game.pool_batch(
                config.batch_size, tf.float32, key, tf.constant(index, tf.int64)
            )
            model(batch, training=True)
        return BN_REFRESH_BATCHES

    expected = statistics(other_run.average.kept(on_pool))
    for (mean, var), (mean2, var2) in zip(measured, expected, strict=True):
        np.testing.assert_allclose(mean, mean2, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var, var2, rtol=1e-5, atol=1e-6)
    # On the generator's images the statistics differ; the pool is left as it was.
    generator_run = trained()
    generator_run.refresh_from = "generator"
    other = statistics(generator_run.kept_student)
    assert not np.allclose(other[0][0], measured[0][0])
    np.testing.assert_array_equal(trainer.pool.images.numpy(), pool_before)
    # An empty pool has nothing to draw (a draw from it fails): before the first
    # iteration the generator's images are measured instead.
    fresh = ZeroShotTrainer(config, distill.check_inputs(config, data))
    first = statistics(fresh.kept_student)
    assert len(first) == len(measured) and not np.allclose(first[0][0], 0.0)


def test_class_prior_mask_and_weight_against_numpy(tiny):
    _, _, teacher_dir = tiny
    frozen = model_io.load_teacher(teacher_dir)
    student = wide_resnet(10, 1, 3, (16, 16, 3))
    gen = build_generator(16 + 3, (16, 16, 3))  # z beside a one-hot of 3 classes
    optimizers = [adversarial.adam(lr, 5.0, False) for lr in (2e-3, 1e-3)]
    optimizers[0].build(student.trainable_variables)
    optimizers[1].build(gen.trainable_variables)
    config = adversarial.GameConfig(
        student_steps=1,
        class_prior=0.7,
        adversarial_mask=True,
        adversarial_weight=1.3,
    )
    game = adversarial.AdversarialGame(frozen, student, gen, *optimizers, config)
    gen_before, student_before = _clone(gen), _clone(student)
    z = tf.random.normal((9, 16))
    values = game.iteration(z, tf.constant(0, tf.int64))
    # The generator is fed z beside one-hot classes 0, 1, 2, 0, 1, 2, ...
    labels = np.arange(9) % 3
    fed = game.generator_input(z).numpy()
    np.testing.assert_array_equal(fed[:, 16:], np.eye(3)[labels])
    images = gen_before(fed, training=True)
    t = frozen(images, training=False)["logits"].numpy().astype(np.float64)
    s = student_before(images, training=True)["logits"].numpy().astype(np.float64)
    lt, ls = log_softmax(t, axis=1), log_softmax(s, axis=1)
    per_example = (np.exp(lt) * (lt - ls)).mean(1)
    agree = t.argmax(1) == s.argmax(1)
    masked = (per_example * agree).mean()
    cross_entropy = -lt[np.arange(9), labels].mean()
    assert float(values["train/class_loss"]) == pytest.approx(cross_entropy, rel=1e-4)
    assert float(values["train/generator_kl"]) == pytest.approx(
        per_example.mean(), rel=1e-4
    )
    assert float(values["train/generator_loss"]) == pytest.approx(
        -1.3 * masked + 0.7 * cross_entropy, rel=1e-4, abs=1e-7
    )


def test_replay_temperature_scales_only_the_pool_steps_kl(tiny):
    frozen, student, gen, optimizers = _networks(tiny[2])
    config = adversarial.GameConfig(
        student_steps=1, replay_size=16, replay_steps=2, replay_temperature=4.0
    )
    pool = replay.ReplayPool(16, (16, 16, 3))
    game = replay.ReplayGame(frozen, student, gen, *optimizers, config, pool=pool)
    # T^2 x KL at temperature T, against NumPy, on the student before its update.
    images = gen(tf.random.normal((8, 16)), training=True)
    targets, taps = game.teacher_targets(images)
    logits = _clone(student)(images, training=True)["logits"].numpy()
    loss, kl, attention = game.student_step(images, targets, taps, 4.0)
    lt = log_softmax(targets.numpy().astype(np.float64) / 4, axis=1)
    ls = log_softmax(logits.astype(np.float64) / 4, axis=1)
    expected_kl = (np.exp(lt) * (lt - ls)).mean()
    assert float(kl) == pytest.approx(expected_kl, rel=1e-4)
    assert float(loss) == pytest.approx(
        16 * expected_kl + 250 * float(attention), rel=1e-4
    )
    # In the iteration, the step on the new batch keeps the paper's KL (None); the
    # steps on pool batches get the replay temperature.
    seen = []
    step = game._student_step

    def recording(*args):
        seen.append(args[3] if len(args) > 3 else None)
        return step(*args)

    game._student_step = recording
    values = game.iteration(tf.random.normal((8, 16)), tf.constant(0, tf.int64))
    assert seen == [None, 4.0] and np.isfinite(float(values["train/replay_kl"]))
    with pytest.raises(UserError, match="replay_temperature"):
        tiny_distill_config(tiny, "unused", replay_temperature=0.0).validate()
    # Where it would do nothing, it is refused rather than ignored.
    for settings in (
        {},
        {"replay_size": 16, "replay_steps": 2, "adversarial_loss": "l1"},
    ):
        with pytest.raises(UserError, match="applies to the student's KL on replay"):
            tiny_distill_config(
                tiny, "unused", replay_temperature=4.0, **settings
            ).validate()


def test_replay_mix_mixes_each_pool_batch_and_needs_a_pool(tiny, monkeypatch):
    frozen, student, gen, optimizers = _networks(tiny[2])
    config = adversarial.GameConfig(
        student_steps=1, replay_size=16, replay_steps=2, replay_mix="cutmix"
    )
    pool = replay.ReplayPool(16, (16, 16, 3))
    game = replay.ReplayGame(frozen, student, gen, *optimizers, config, pool=pool)
    calls = []
    seen = tf.Variable(tf.zeros((8, 16, 16, 3)))

    def marking(images, seed, mode):
        calls.append(mode)
        return tf.fill(tf.shape(images), 7.0)

    targets = game.teacher_targets

    def teacher(images):
        seen.assign(images)
        return targets(images)

    monkeypatch.setattr(replay.pipelines, "mix_batch", marking)
    game.teacher_targets = teacher
    values = game.iteration(tf.random.normal((8, 16)), tf.constant(0, tf.int64))
    # Traced once for the loop over pool steps: one mix, and the batch the teacher
    # labels last (on the last pool step) is what the mix returned.
    assert calls == ["cutmix"] and np.isfinite(float(values["train/replay_kl"]))
    np.testing.assert_array_equal(seen.numpy(), 7.0)
    with pytest.raises(UserError, match="--replay_mix=mixup mixes replay batches"):
        tiny_distill_config(tiny, "unused", replay_mix="mixup").validate()
    with pytest.raises(UserError, match="replay_mix must be one of"):
        tiny_distill_config(
            tiny, "unused", replay_size=16, replay_steps=1, replay_mix="blend"
        ).validate()
