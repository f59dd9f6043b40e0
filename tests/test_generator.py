"""Tests of the generator: shapes, output standardisation, bad shapes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import zskt_tf


@pytest.mark.parametrize("shape", [(32, 32, 3), (32, 32, 1), (16, 24, 2)])
def test_output_shape(shape):
    model = zskt_tf.generator(z_dim=100, image_shape=shape)
    images = model(tf.random.normal((4, 100)), training=True)
    assert images.shape == (4, *shape)
    assert images.dtype == tf.float32


def test_training_mode_output_is_standardised_per_channel():
    model = zskt_tf.generator(z_dim=100, image_shape=(32, 32, 3))
    images = model(tf.random.normal((64, 100)), training=True).numpy()
    # Fresh affine BN: gamma 1, beta 0, so each channel has mean 0 and std 1 over the
    # batch and all positions.
    np.testing.assert_allclose(images.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(images.std(axis=(0, 1, 2)), 1.0, atol=1e-3)


def test_architecture_follows_the_reference():
    model = zskt_tf.generator(z_dim=100, image_shape=(32, 32, 3))
    assert model.get_layer("project").units == 128 * 8 * 8
    assert model.get_layer("conv1").filters == 128
    assert model.get_layer("conv2").filters == 64
    assert model.get_layer("to_image").filters == 3
    for name in ("conv1", "conv2", "to_image"):
        assert model.get_layer(name).use_bias
    output_bn = model.get_layer("image_bn")
    assert output_bn.center and output_bn.scale  # affine output BN, no tanh after it
    assert model.layers[-1] is output_bn
    slopes = [
        layer.negative_slope
        for layer in model.layers
        if isinstance(layer, keras.layers.LeakyReLU)
    ]
    assert slopes == [0.2, 0.2]


def test_bad_image_shape_raises():
    with pytest.raises(ValueError, match="at least 8"):
        zskt_tf.generator(image_shape=(6, 32, 3))


@pytest.mark.parametrize(
    "shape, stages, cropped",
    [((28, 28, 1), 2, True), ((64, 64, 3), 3, False), ((96, 96, 3), 4, True)],
)
def test_other_sizes_add_stages_and_crop(shape, stages, cropped):
    # Sizes other than 32 keep the paper's design with as many x2 stages as the
    # size needs from 8x8, the last of 64 channels, and a centre crop when the size
    # is not 8 x 2^k; the output stays standardised per channel.
    model = zskt_tf.generator(z_dim=16, image_shape=shape)
    filters = [model.get_layer(f"conv{k}").filters for k in range(1, stages + 1)]
    assert filters == [128] * (stages - 1) + [64]
    assert ("crop" in [layer.name for layer in model.layers]) == cropped
    images = model(tf.random.normal((8, 16)), training=True).numpy()
    assert images.shape == (8, *shape)
    np.testing.assert_allclose(images.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)


def test_dense_and_convs_use_pytorch_default_init():
    # Weights and biases uniform(+-1/sqrt(fan_in)), each layer drawn independently.
    model = zskt_tf.generator(100, (32, 32, 3))
    for name, fan_in in (
        ("project", 100),
        ("conv1", 9 * 128),
        ("conv2", 9 * 128),
        ("to_image", 9 * 64),
    ):
        layer = model.get_layer(name)
        bound = fan_in**-0.5
        for values in (layer.kernel.numpy(), layer.bias.numpy()):
            assert np.abs(values).max() <= bound
            # Uniform on [-b, b]: the spread fills the interval, biases are not zero.
            assert np.abs(values).max() > 0.9 * bound
            assert values.std() == pytest.approx(bound / np.sqrt(3), rel=0.15)
    assert not np.array_equal(
        model.get_layer("conv1").bias.numpy()[:64],
        model.get_layer("conv2").bias.numpy(),
    )
