"""Tests of the Wide ResNet builder against the reference architecture facts."""

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import zskt_tf
from tests.helpers import HANG_GUARD_SECONDS
from zskt_tf.wide_resnet import check_architecture


def _trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


@pytest.mark.parametrize(
    "depth, width, expected",
    [(16, 1, 175_066), (16, 2, 691_674), (40, 1, 563_930), (40, 2, 2_243_546)],
)
def test_parameter_counts_match_the_authors(depth, width, expected):
    assert _trainable_count(zskt_tf.wide_resnet(depth, width)) == expected


def test_outputs_are_named_with_expected_shapes():
    model = zskt_tf.wide_resnet(16, 2)
    outputs = model(tf.zeros((3, 32, 32, 3)), training=False)
    assert set(outputs) == {"logits", "block1", "block2", "block3"}
    assert outputs["logits"].shape == (3, 10)
    assert outputs["block1"].shape == (3, 32, 32, 32)
    assert outputs["block2"].shape == (3, 16, 16, 64)
    assert outputs["block3"].shape == (3, 8, 8, 128)
    assert outputs["logits"].dtype == tf.float32


def test_grayscale_input_and_other_class_counts():
    model = zskt_tf.wide_resnet(10, 1, num_classes=100, input_shape=(32, 32, 1))
    outputs = model(tf.zeros((2, 32, 32, 1)), training=False)
    assert outputs["logits"].shape == (2, 100)
    assert outputs["block3"].shape == (2, 8, 8, 64)
    odd = zskt_tf.wide_resnet(10, 1, num_classes=7, input_shape=(28, 28, 1))
    assert odd(tf.zeros((1, 28, 28, 1)), training=False)["logits"].shape == (1, 7)


@pytest.mark.parametrize("depth, width", [(18, 1), (4, 1), (15, 2), (16, 0), (16, -1)])
def test_invalid_architecture_raises_value_error(depth, width):
    with pytest.raises(ValueError, match="depth|width"):
        zskt_tf.wide_resnet(depth, width)


def test_blocks_per_group():
    assert check_architecture(40, 2) == 6
    assert check_architecture(16, 1) == 2


def test_init_statistics_and_batchnorm_settings():
    model = zskt_tf.wide_resnet(16, 4)
    conv = model.get_layer("group3_block1_conv2")  # 3x3, 256 -> 256 channels
    kernel = conv.kernel.numpy()
    expected_std = np.sqrt(2.0 / (3 * 3 * 256))
    assert abs(kernel.mean()) < 0.05 * expected_std
    assert kernel.std() == pytest.approx(expected_std, rel=0.02)
    # Untruncated normal: some weights lie beyond two standard deviations.
    assert np.mean(np.abs(kernel) > 2 * expected_std) > 0.03
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert layer.epsilon == 1e-5
            assert layer.momentum == 0.9
            np.testing.assert_array_equal(layer.gamma.numpy(), 1.0)
            np.testing.assert_array_equal(layer.beta.numpy(), 0.0)
        if isinstance(layer, keras.layers.Conv2D):
            assert not layer.use_bias
    dense = model.get_layer("logits")
    np.testing.assert_array_equal(dense.bias.numpy(), 0.0)
    bound = 1.0 / np.sqrt(dense.kernel.shape[0])
    assert np.abs(dense.kernel.numpy()).max() <= bound


def test_every_kernel_is_drawn_independently():
    # One shared unseeded Keras initialiser gives same-shaped kernels equal values.
    model = zskt_tf.wide_resnet(16, 2)
    kernels = [w.numpy() for w in model.weights if w.path.endswith("kernel")]
    assert len(kernels) == 17  # stem + 12 block convs + 3 shortcuts + classifier
    for i, a in enumerate(kernels):
        for b in kernels[i + 1 :]:
            assert a.shape != b.shape or not np.array_equal(a, b)


_INIT_CHECKSUM = (
    "import sys, keras, numpy as np, zskt_tf;"
    "keras.utils.set_random_seed(int(sys.argv[1]));"
    "m = zskt_tf.wide_resnet(16, 1);"
    "print(repr(sum(float(np.abs(w).sum()) for w in m.get_weights())))"
)


def _init_checksum(seed):
    result = subprocess.run(
        [sys.executable, "-c", _INIT_CHECKSUM, str(seed)],
        capture_output=True,
        text=True,
        check=True,
        timeout=HANG_GUARD_SECONDS,
    )
    return float(result.stdout.split()[-1])


def test_the_seed_alone_fixes_the_initial_weights_across_processes():
    first, again, other = _init_checksum(3), _init_checksum(3), _init_checksum(4)
    assert first == again
    assert first != other


def test_shortcut_sees_the_bn_relu_input_and_identity_is_raw():
    model = zskt_tf.wide_resnet(16, 1)
    # group2_block0 changes channels: the 1x1 projection's input is the block's ReLU.
    shortcut = model.get_layer("group2_block0_shortcut")
    relu = model.get_layer("group2_block0_1_relu")
    assert shortcut.input is relu.output
    # conv1 sees the same ReLU output, through PyTorch-style symmetric padding.
    pad = model.get_layer("group2_block0_conv1_pad")
    assert pad.input is relu.output
    assert model.get_layer("group2_block0_conv1").input is pad.output
    assert shortcut.strides == (2, 2) and shortcut.kernel_size == (1, 1)
    # group2_block1 keeps channels: its Add takes the previous block's raw output.
    add = model.get_layer("group2_block1_add")
    assert add.input[0] is model.get_layer("group2_block0_add").output
    # group1_block0 goes 16 -> 16 channels for width 1, so its shortcut is identity.
    assert "group1_block0_shortcut" not in [layer.name for layer in model.layers]


def test_training_mode_uses_batch_statistics():
    model = zskt_tf.wide_resnet(10, 1)
    images = tf.random.normal((8, 32, 32, 3)) * 3.0 + 5.0
    train_logits = model(images, training=True)["logits"]
    eval_logits = model(images, training=False)["logits"]
    assert not np.allclose(train_logits.numpy(), eval_logits.numpy())


def test_stride_two_convs_pad_like_pytorch():
    """3x3 stride-2 convs pad one pixel on every side (PyTorch padding=1)."""
    model = zskt_tf.wide_resnet(10, 1, input_shape=(8, 8, 3))
    relu = model.get_layer("group2_block0_1_relu")
    conv = model.get_layer("group2_block0_conv1")
    probe = keras.Model(model.input, [relu.output, conv.output])
    activated, convolved = probe(tf.random.normal((2, 8, 8, 3)), training=False)
    expected = tf.nn.conv2d(
        activated, conv.kernel, strides=2, padding=[[0, 0], [1, 1], [1, 1], [0, 0]]
    )
    assert convolved.shape == (2, 4, 4, 32)
    np.testing.assert_allclose(convolved.numpy(), expected.numpy(), atol=1e-5)
