"""Wide ResNet WRN-d-k as a Keras functional model exposing its attention taps."""

from __future__ import annotations

import functools

import keras

from zskt_tf import callable_module
from zskt_tf.configs import check_architecture  # noqa: F401 (re-exported)
from zskt_tf.errors import UserError

# PyTorch BatchNorm2d defaults (eps 1e-5, running-stat momentum 0.1, which is Keras
# momentum 0.9): the authors' networks were trained with these.
BatchNorm = functools.partial(
    keras.layers.BatchNormalization, epsilon=1e-5, momentum=0.9
)

# Initialisers are made fresh for every layer. A Keras 3 initialiser created without a
# seed draws one fixed integer seed when it is constructed, so a single shared instance
# would give every kernel of the same shape the same values (and, built at import
# time, a seed that keras.utils.set_random_seed does not control).


def conv_init() -> keras.initializers.Initializer:
    """The authors' conv init: normal(0, sqrt(2 / (k * k * out_channels))), i.e.
    fan-out He initialisation without truncation."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )


def dense_init() -> keras.initializers.Initializer:
    """PyTorch's default nn.Linear weight init, uniform(+-1/sqrt(fan_in)); the
    authors only zero the bias."""
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
    )


TAPS = ("block1", "block2", "block3")  # attention taps: the three groups' outputs
OUTPUT_NAMES = ("logits", *TAPS)


def output_dtype() -> str:
    """The dtype of a model's final layer under the current policy: its variable
    dtype, so float32 under mixed precision (softmax and losses stay stable there)
    and the policy's own dtype otherwise (float64 for the parity tests)."""
    return keras.config.dtype_policy().variable_dtype


def _conv(x, filters: int, kernel_size: int, strides: int, name: str):
    """Bias-free conv with PyTorch's symmetric zero padding of kernel_size // 2.

    Keras "same" padding with stride 2 on an even input pads only bottom/right, which
    samples a different grid than the authors' padding=1 convs; explicit symmetric
    padding reproduces theirs exactly (and lets their trained weights be imported).
    """
    padding = "same"
    if strides > 1 and kernel_size > 1:
        x = keras.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_initializer=conv_init(),
        name=name,
    )(x)


def _bn_relu(x, name: str, synchronized: bool):
    x = BatchNorm(name=f"{name}_bn", synchronized=synchronized)(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _basic_block(x, filters: int, strides: int, name: str, synchronized: bool):
    """Pre-activation block: BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3(1) + shortcut."""
    equal_in_out = x.shape[-1] == filters
    activated = _bn_relu(x, f"{name}_1", synchronized)
    out = _conv(activated, filters, 3, strides, f"{name}_conv1")
    out = _bn_relu(out, f"{name}_2", synchronized)
    out = _conv(out, filters, 3, 1, f"{name}_conv2")
    if equal_in_out:
        # The authors' WRN only ever changes stride together with channels, so an
        # identity shortcut never needs to downsample.
        shortcut = x
    else:
        # The 1x1 projection sees the BN-ReLU'd input, like conv1 (authors' code).
        shortcut = _conv(activated, filters, 1, strides, f"{name}_shortcut")
    return keras.layers.Add(name=f"{name}_add")([shortcut, out])


def wide_resnet(
    depth: int,
    width: int,
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    name: str | None = None,
    synchronized: bool = False,
) -> keras.Model:
    """Builds WRN-depth-width (Zagoruyko & Komodakis, arXiv 1605.07146; ZSKT Sec. 4).

    Args:
        depth: total depth d = 6n + 4.
        width: widening factor k; groups have 16k, 32k and 64k channels.
        num_classes: size of the classifier output.
        input_shape: (height, width, channels) of the normalised input images.
        name: model name; defaults to "wrn-{depth}-{width}".
        synchronized: BatchNorm uses the global batch's statistics across replicas
            (for training under tf.distribute with more than one replica; the
            weights are the same either way).

    Returns:
        A functional keras.Model mapping images to a dict with "logits" (B, classes)
        and "block1", "block2", "block3": the outputs of the three groups before the
        final BN-ReLU, used as attention taps.
    """
    blocks_per_group = check_architecture(depth, width)
    if num_classes < 2:
        raise UserError(f"num_classes must be at least 2, got {num_classes}")
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = _conv(inputs, 16, 3, 1, "stem_conv")
    taps = {}
    for group, (channels, stride) in enumerate(
        [(16 * width, 1), (32 * width, 2), (64 * width, 2)], start=1
    ):
        for block in range(blocks_per_group):
            x = _basic_block(
                x,
                channels,
                stride if block == 0 else 1,
                name=f"group{group}_block{block}",
                synchronized=synchronized,
            )
        taps[f"block{group}"] = x
    x = _bn_relu(x, "head", synchronized)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(
        num_classes,
        kernel_initializer=dense_init(),
        bias_initializer="zeros",
        dtype=output_dtype(),
        name="logits",
    )(x)
    outputs = {"logits": logits, **taps}
    return keras.Model(inputs, outputs, name=name or f"wrn-{depth}-{width}")


def check_taps_match(teacher: keras.Model, student: keras.Model) -> None:
    """Attention transfer needs the same taps with equal spatial sizes (ZSKT Sec. 3).

    Raises:
        UserError: naming both networks' taps.
    """
    teacher_taps = {k: v.shape[1:3] for k, v in teacher.output.items() if k in TAPS}
    student_taps = {k: v.shape[1:3] for k, v in student.output.items() if k in TAPS}
    if teacher_taps.keys() != student_taps.keys() or any(
        tuple(teacher_taps[k]) != tuple(student_taps[k]) for k in teacher_taps
    ):
        raise UserError(
            f"attention transfer needs matching taps: teacher {teacher_taps}, student "
            f"{student_taps}; use a student of the teacher's family or --beta=0"
        )


# zskt_tf.wide_resnet(...) calls wide_resnet() (see zskt_tf.callable_module).
callable_module.make_callable(__name__, lambda: wide_resnet)
