"""The ZSKT generator: noise z to pseudo images in normalised input space."""

from __future__ import annotations

import math

import keras

from zskt_tf import callable_module
from zskt_tf.wide_resnet import BatchNorm, output_dtype

LEAKY_RELU_SLOPE = 0.2  # the authors' generator


def _torch_default_init(fan_in: int) -> dict:
    """PyTorch's default nn.Linear / nn.Conv2d init, which the authors' generator
    keeps: weights and biases uniform(+-1/sqrt(fan_in)).

    Keras' Glorot-uniform weights and zero biases differ in scale (the projection's
    weights would be 3.7x smaller), and with Adam, whose steps do not scale with the
    weights, the scale sets how fast the generator moves. A fresh initialiser per
    layer keeps the draws independent and seeded (see wide_resnet).
    """
    bound = fan_in**-0.5
    return dict(
        kernel_initializer=keras.initializers.VarianceScaling(
            scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
        ),
        bias_initializer=keras.initializers.RandomUniform(-bound, bound),
    )


BASE_SIZE = 8  # the paper's generator starts from 8x8 feature maps


def upsampling_stages(image_shape) -> int:
    """How many x2 stages take the 8x8 start to at least the image's size."""
    size = max(image_shape[:2])
    return max(0, math.ceil(math.log2(size / BASE_SIZE)))


def generator(
    z_dim: int = 100,
    image_shape: tuple[int, int, int] = (32, 32, 3),
    name: str = "generator",
    synchronized: bool = False,
) -> keras.Model:
    """Builds the authors' generator (ZSKT, arXiv 1905.09768, Sec. 4), any image size.

    dense(z -> 128 x 8 x 8) -> BN -> [up x2 -> conv3x3 128 -> BN -> LeakyReLU]
    -> [up x2 -> conv3x3 64 -> BN -> LeakyReLU] -> conv3x3 C -> BN (affine): the
    paper's layers at 32x32 (and 32x32x1). Another size S = max(H, W) takes
    k = ceil(log2(S / 8)) upsampling stages, all of 128 channels but the last (64):
    16x16 one stage, 64x64 three, 96x96 and 128x128 four. Sizes that are not
    8 x 2^k are generated at 8 x 2^k and centre-cropped to H x W before the output
    BN (28x28 from 32x32, 96x96 from 128x128), so every output pixel is
    standardised.

    There is no tanh: the final BatchNorm standardises each channel over the batch,
    which puts pseudo images in the same space as normalised real data. Always call it
    with ``training=True`` so that BN uses batch statistics (the authors never switch
    the generator to eval mode).

    Args:
        z_dim: size of the generator's input (the Gaussian noise, and a one-hot class
            for a class-conditional generator).
        image_shape: (height, width, channels), height and width at least 8.
        name: model name.
        synchronized: BatchNorm uses the global batch's statistics across replicas
            (under tf.distribute with more than one replica).

    Returns:
        A functional keras.Model mapping (B, z_dim) noise to (B, H, W, C) images.
    """
    height, width, channels = image_shape
    if min(height, width) < BASE_SIZE:
        raise ValueError(
            f"image height and width must be at least {BASE_SIZE}: {image_shape}"
        )
    if z_dim < 1 or channels < 1:
        raise ValueError(f"z_dim and channels must be positive: {z_dim}, {channels}")
    stages = upsampling_stages(image_shape)
    z = keras.Input(shape=(z_dim,), name="z")
    x = keras.layers.Dense(
        128 * BASE_SIZE * BASE_SIZE, name="project", **_torch_default_init(z_dim)
    )(z)
    x = keras.layers.Reshape((BASE_SIZE, BASE_SIZE, 128), name="reshape")(x)
    x = BatchNorm(name="project_bn", synchronized=synchronized)(x)
    for index in range(1, stages + 1):
        filters = 64 if index == stages else 128
        x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"up{index}")(x)
        x = keras.layers.Conv2D(
            filters,
            3,
            padding="same",
            name=f"conv{index}",
            **_torch_default_init(9 * x.shape[-1]),
        )(x)
        x = BatchNorm(name=f"conv{index}_bn", synchronized=synchronized)(x)
        x = keras.layers.LeakyReLU(
            negative_slope=LEAKY_RELU_SLOPE, name=f"lrelu{index}"
        )(x)
    x = keras.layers.Conv2D(
        channels,
        3,
        padding="same",
        name="to_image",
        **_torch_default_init(9 * x.shape[-1]),
    )(x)
    size = BASE_SIZE * 2**stages
    if (height, width) != (size, size):
        top, left = (size - height) // 2, (size - width) // 2
        x = keras.layers.Cropping2D(
            ((top, size - height - top), (left, size - width - left)), name="crop"
        )(x)
    # The output BN keeps its affine scale and shift; float32 under mixed precision
    # so pseudo images match normalised real data in precision.
    images = BatchNorm(
        name="image_bn", dtype=output_dtype(), synchronized=synchronized
    )(x)
    return keras.Model(z, images, name=name)


# zskt_tf.generator(...) calls generator() (see zskt_tf.callable_module).
callable_module.make_callable(__name__, lambda: generator)
