"""How a model's inputs are scaled, and where the generator's images go.

Every convention is written as a per-channel (mean, std) on the [0, 1] pixel scale:
the model takes (pixels / 255 - mean) / std. A range [lo, hi] is mean -lo/(hi-lo),
std 1/(hi-lo): 0,255 is mean 0, std 1/255; -1,1 is mean 0.5, std 0.5. That is the
form zskt_tf's own runs record (the dataset's normalisation), so test images are
prepared the same way for every teacher (zskt_tf.pipelines.normalize).

The generator ends in a BatchNorm, so its images are standardised per channel
(the authors' generator). They are read as pixels of mean `image_mean` and
std `image_std`, u = image_mean + image_std * g, and mapped into the model's space:
(u - mean) / std. For a standardising convention image_mean/std are its own
mean/std, so the map is the identity (the paper's case); for a range they are 0.5
and 0.25 (+-2 standard deviations span the range).
"""

from __future__ import annotations

import dataclasses

from zskt_tf.errors import UserError

RANGES = {"0,255": (0.0, 255.0), "0,1": (0.0, 1.0), "-1,1": (-1.0, 1.0)}
# ImageNet's statistics, as keras.applications' "torch" preprocessing uses them.
NAMED = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
RANGE_IMAGE_MEAN, RANGE_IMAGE_STD = 0.5, 0.25
MEAN_STD_FORM = "mean=M1,M2,M3:std=S1,S2,S3 (per channel, on the [0, 1] pixel scale)"
FORMS = f"0,255 | 0,1 | -1,1 | imagenet | {MEAN_STD_FORM}"


@dataclasses.dataclass(frozen=True)
class InputScale:
    """A model's input convention, (pixels / 255 - mean) / std per channel, and
    the pixel statistics the generator's standardised images are read with."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    spec: str

    @property
    def identity(self) -> bool:
        """Whether the generator's images are already in the model's space."""
        return self.mean == self.image_mean and self.std == self.image_std

    def generator_map(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(scale, shift) per channel: model input = scale * g + shift."""
        scale = tuple(s / t for s, t in zip(self.image_std, self.std, strict=True))
        shift = tuple(
            (m - n) / t
            for m, n, t in zip(self.image_mean, self.mean, self.std, strict=True)
        )
        return scale, shift

    def pixel_bounds(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(low, high) per channel: pixels 0 and 1 (of 255/255) in the model's
        space."""
        low = tuple(-m / t for m, t in zip(self.mean, self.std, strict=True))
        high = tuple((1.0 - m) / t for m, t in zip(self.mean, self.std, strict=True))
        return low, high


def _per_channel(
    values, channels: int, what: str, option: str = "--input_scale"
) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        values *= channels
    if len(values) != channels:
        raise UserError(
            f"{option}: {what} has {len(values)} values for {channels} channels"
        )
    return values


def parse(spec: str, channels: int) -> InputScale:
    """An --input_scale value -> InputScale for images with `channels` channels.

    Raises:
        UserError: a value not of the forms in FORMS.
    """
    text = spec.replace(" ", "")
    if text in RANGES:
        low, high = RANGES[text]
        mean = (-low / (high - low),) * channels
        std = (1.0 / (high - low),) * channels
        image = ((RANGE_IMAGE_MEAN,) * channels, (RANGE_IMAGE_STD,) * channels)
        return InputScale(mean, std, *image, spec=text)
    if text in NAMED:
        mean, std = (_per_channel(v, channels, text) for v in NAMED[text])
        return InputScale(mean, std, mean, std, spec=text)
    given = _mean_std(spec, channels, "--input_scale", FORMS)
    if given:
        return InputScale(*given, *given, spec=text)
    raise UserError(f"unknown --input_scale {spec!r}; give one of {FORMS}")


def _mean_std(spec: str, channels: int, option: str, forms: str):
    """(mean, std) per channel of a mean=M:std=S spec, None for another form.

    Raises:
        UserError: not numbers, the wrong number of values, or a std <= 0.
    """
    text = spec.replace(" ", "")
    if not (text.startswith("mean=") and ":std=" in text):
        return None
    mean_text, std_text = text[len("mean=") :].split(":std=", 1)
    try:
        numbers = [[float(v) for v in t.split(",")] for t in (mean_text, std_text)]
    except ValueError:
        raise UserError(f"{option} {spec!r}: not numbers; {forms}") from None
    mean = _per_channel(numbers[0], channels, "mean", option)
    std = _per_channel(numbers[1], channels, "std", option)
    if min(std) <= 0:
        raise UserError(f"{option} {spec!r}: std must be positive")
    return mean, std


def with_image_stats(scale: InputScale, spec: str) -> InputScale:
    """scale with the generator's images read as pixels of the statistics in spec,
    mean=M:std=S (per channel, on the [0, 1] scale; --image_stats), instead of
    the convention's own. The paper's case reads them with the data's statistics
    (the identity map); this states them for a teacher whose convention is a range.

    Raises:
        UserError: spec not of that form.
    """
    given = _mean_std(spec, len(scale.mean), "--image_stats", MEAN_STD_FORM)
    if not given:
        raise UserError(f"--image_stats {spec!r}: give it as {MEAN_STD_FORM}")
    return dataclasses.replace(scale, image_mean=given[0], image_std=given[1])


def standardising(mean, std) -> InputScale:
    """The convention of a model trained on (pixels / 255 - mean) / std (every
    zskt_tf network: the dataset's normalisation)."""
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    spec = f"mean={','.join(map(str, mean))}:std={','.join(map(str, std))}"
    return InputScale(mean, std, mean, std, spec=spec)
