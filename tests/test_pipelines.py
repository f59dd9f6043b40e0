"""Input pipelines: normalisation, augmentation, deterministic resumable order."""

import numpy as np
import tensorflow as tf

from zskt_tf import datasets, pipelines

INFO = datasets.get_info("cifar10")


def _images(n=64):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_normalize_matches_numpy():
    images = _images(4)
    result = pipelines.normalize(images, INFO.mean, INFO.std).numpy()
    expected = (images / 255.0 - np.array(INFO.mean)) / np.array(INFO.std)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)


def test_augmentation_keeps_shape_and_values_and_varies():
    images = _images(64)
    out = pipelines.augment_batch(tf.constant(images), tf.constant([1, 2])).numpy()
    assert out.shape == images.shape and out.dtype == np.uint8
    changed = [not np.array_equal(a, b) for a, b in zip(out, images, strict=True)]
    # Only a centred crop without a flip (1 in 162) leaves an image unchanged.
    assert np.mean(changed) > 0.9
    # Every output pixel is an input pixel of the same image or zero padding.
    for a, b in zip(out[:8], images[:8], strict=True):
        assert set(np.unique(a)) <= set(np.unique(b)) | {0}
    # Each crop is a translated and possibly mirrored window of the padded image.
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    for a, p in zip(out[:16], padded[:16], strict=True):
        windows = [
            w
            for dy in range(9)
            for dx in range(9)
            for w in (
                p[dy : dy + 32, dx : dx + 32],
                p[dy : dy + 32, dx : dx + 32][:, ::-1],
            )
        ]
        assert any(np.array_equal(a, w) for w in windows)
    # Different images get different crops: the output is no global shift.
    shifts = {tuple(np.argwhere(a.any(-1))[0]) for a in out}
    assert len(shifts) > 5
    again = pipelines.augment_batch(tf.constant(images), tf.constant([1, 2])).numpy()
    np.testing.assert_array_equal(out, again)


def test_eval_dataset_is_ordered_and_normalised():
    images, labels = _images(10), np.arange(10)
    batches = list(pipelines.eval_dataset(images, labels, INFO, batch_size=4))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels)


def test_train_dataset_shuffles_by_seed_and_resumes_mid_epoch():
    images, labels = _images(50), np.arange(50)
    epoch = list(pipelines.train_dataset(images, labels, INFO, 16, seed=0, epoch=3))
    assert [b[0].shape[0] for b in epoch] == [16, 16, 16, 2]  # last batch kept
    seen = np.concatenate([b[1] for b in epoch])
    assert sorted(seen) == list(range(50)) and not np.array_equal(seen, np.arange(50))
    resumed = list(
        pipelines.train_dataset(
            images, labels, INFO, 16, seed=0, epoch=3, start_batch=2
        )
    )
    for a, b in zip(resumed, epoch[2:], strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    other = list(pipelines.train_dataset(images, labels, INFO, 16, seed=0, epoch=4))
    assert not np.array_equal(np.concatenate([b[1] for b in other]), seen)
    # A budget ending inside the epoch: the same batches, ending early.
    cut = list(
        pipelines.train_dataset(
            images, labels, INFO, 16, seed=0, epoch=3, start_batch=1, end_batch=3
        )
    )
    assert len(cut) == 2
    for a, b in zip(cut, epoch[1:3], strict=True):
        np.testing.assert_array_equal(a[0], b[0])
    past_the_end = pipelines.train_dataset(
        images, labels, INFO, 16, seed=0, epoch=3, end_batch=99
    )
    assert len(list(past_the_end)) == 4


def test_mix_batch_blends_or_pastes_a_box_from_the_neighbour():
    rng = np.random.default_rng(1)
    images = tf.constant(rng.normal(size=(256, 16, 12, 3)), tf.float32)
    x = images.numpy().astype(np.float64)
    partner = np.roll(x, 1, axis=0)
    seed = tf.constant([3, 4], tf.int64)
    mixed = pipelines.mix_batch(images, seed, "mixup").numpy()
    # mixup: each output is lam x image + (1 - lam) x the previous image, one lam
    # per image, uniform on [0, 1].
    lam = ((mixed - partner) * (x - partner)).sum((1, 2, 3)) / ((x - partner) ** 2).sum(
        (1, 2, 3)
    )
    expected = lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * partner
    np.testing.assert_allclose(mixed, expected, atol=1e-5)
    assert lam.min() >= 0 and lam.max() <= 1 and 0.4 < lam.mean() < 0.6
    np.testing.assert_array_equal(
        mixed, pipelines.mix_batch(images, seed, "mixup").numpy()
    )
    # cutmix: every pixel is the image's or the partner's, all channels alike, and
    # the partner's pixels form one axis-aligned box (clipped at the border).
    cut = pipelines.mix_batch(images, seed, "cutmix").numpy()
    from_partner = cut == partner
    assert np.all(from_partner | (cut == x))
    box = from_partner.all(-1)
    assert np.array_equal(box, from_partner.any(-1))
    for mask in box:
        rows, cols = mask.any(1), mask.any(0)
        assert np.array_equal(mask, rows[:, None] & cols[None, :])
        for line in (rows, cols):
            if line.any():
                where = np.flatnonzero(line)
                assert where[-1] - where[0] + 1 == len(where)  # contiguous
    # The box covers (1 - lam) of the image before clipping: a mean share of at most
    # 1/2, about 1/3 after clipping at the border.
    share = box.mean((1, 2))
    assert 0.2 < share.mean() < 0.5 and share.max() > 0.6
