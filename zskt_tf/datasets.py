"""The dataset registry and loading: tensorflow-datasets online, local files offline."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from zskt_tf import embedded
from zskt_tf.errors import UserError

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy
    bridge bus butterfly camel can castle caterpillar cattle chair chimpanzee clock
    cloud cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish forest
    fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster
    man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter
    palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit
    raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake
    spider squirrel streetcar sunflower sweet_pepper table tank telephone television
    tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman
    worm""".split()
)
FASHION_MNIST_CLASSES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
DIGITS = tuple(str(digit) for digit in range(10))


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a program needs to know about a dataset besides its pixels.

    Attributes:
        name: registry name (or "folder" for a user's image-folder tree).
        class_names: one name per label index.
        image_shape: (H, W, C) of the model input; 28x28 sets are padded to 32x32.
        mean, std: per-channel normalisation on the [0, 1] pixel scale.
        augment: whether teacher training uses random crop (pad 4) + horizontal flip.
        tfds_name: the tensorflow-datasets name, or None.
    """

    name: str
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    tfds_name: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> DatasetInfo:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in fields}
        for key in ("class_names", "image_shape", "mean", "std"):
            values[key] = tuple(values[key])
        return cls(**values)


# Normalisation constants. CIFAR-10 and SVHN are the authors' code's.
# The others are the per-channel mean and std over every pixel of the training split
# on the [0, 1] scale, before any padding: Fashion-MNIST was measured on the official
# IDX files (60,000 images: 0.2860, 0.3530); MNIST and CIFAR-100 are the widely used
# values obtained the same way.
REGISTRY = {
    "cifar10": DatasetInfo(
        "cifar10",
        CIFAR10_CLASSES,
        (32, 32, 3),
        (0.4914, 0.4822, 0.4465),
        (0.2023, 0.1994, 0.2010),
        True,
        "cifar10",
    ),
    "cifar100": DatasetInfo(
        "cifar100",
        CIFAR100_CLASSES,
        (32, 32, 3),
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        True,
        "cifar100",
    ),
    # The authors train SVHN teachers without augmentation (the authors' code).
    "svhn": DatasetInfo(
        "svhn",
        DIGITS,
        (32, 32, 3),
        (0.4377, 0.4438, 0.4728),
        (0.1980, 0.2010, 0.1970),
        False,
        "svhn_cropped",
    ),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist",
        FASHION_MNIST_CLASSES,
        (32, 32, 1),
        (0.2860,),
        (0.3530,),
        False,
        "fashion_mnist",
    ),
    "mnist": DatasetInfo(
        "mnist",
        DIGITS,
        (32, 32, 1),
        (0.1307,),
        (0.3081,),
        False,
        "mnist",
    ),
}

FOLDER = "folder"  # a user's own image-folder tree; needs data_dir


def dataset_names() -> list[str]:
    """Valid values of --dataset."""
    return (
        sorted(REGISTRY) + [FOLDER] + [embedded.PREFIX + n for n in embedded.DATASETS]
    )


def get_info(name: str) -> DatasetInfo:
    """Registry lookup with a one-line error that lists the valid names."""
    if embedded.is_embedded(name):
        return REGISTRY[embedded.dataset_entry(name)[1]]
    if name not in REGISTRY:
        raise UserError(
            f"unknown dataset {name!r}; valid datasets: {', '.join(dataset_names())}"
        )
    return REGISTRY[name]


@dataclasses.dataclass(frozen=True)
class ImageData:
    """A dataset in memory: uint8 images (N, H, W, C) and int64 labels."""

    info: DatasetInfo
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def pad_to_32(images: np.ndarray) -> np.ndarray:
    """Zero-pads 28x28 images to 32x32 (2 pixels each side), as the WRNs expect."""
    if images.shape[1:3] == (28, 28):
        return np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    return images


def fit_to_shape(data: ImageData, image_shape, what: str) -> ImageData:
    """data with images of image_shape (H, W, C): unchanged, or 28x28 sets (which
    loading pads to 32x32) cropped back to 28x28, or 28x28 images padded to 32x32.

    Raises:
        UserError: any other mismatch, naming both shapes.
    """
    have, want = tuple(data.test_images.shape[1:]), tuple(image_shape)
    if have == want:
        return data
    if have[-1] == want[-1] and {have[:2], want[:2]} == {(28, 28), (32, 32)}:
        change = pad_to_32 if want[:2] == (32, 32) else _crop_to_28
        info = dataclasses.replace(data.info, image_shape=want)
        return ImageData(
            info,
            change(data.train_images),
            data.train_labels,
            change(data.test_images),
            data.test_labels,
        )
    raise UserError(
        f"dataset {data.info.name} has images {have} but {what} takes {want}"
    )


def _crop_to_28(images: np.ndarray) -> np.ndarray:
    return images[:, 2:30, 2:30] if images.shape[1:3] == (32, 32) else images


def channel_statistics(images: np.ndarray) -> tuple[tuple, tuple]:
    """Per-channel mean and std on the [0, 1] scale, over all images and pixels."""
    flat = images.reshape(-1, images.shape[-1])
    mean = np.zeros(flat.shape[1])
    square = np.zeros(flat.shape[1])
    for start in range(0, len(flat), 1 << 22):  # chunks bound the float64 copy
        chunk = flat[start : start + (1 << 22)].astype(np.float64) / 255.0
        mean += chunk.sum(axis=0)
        square += (chunk**2).sum(axis=0)
    mean /= len(flat)
    std = np.sqrt(square / len(flat) - mean**2)
    return tuple(round(float(v), 4) for v in mean), tuple(
        round(float(v), 4) for v in std
    )


def load_dataset(
    name: str,
    data_dir: str | pathlib.Path | None = None,
    cache_dir: str | pathlib.Path | None = None,
) -> ImageData:
    """Loads a dataset into memory.

    Args:
        name: a registry name (see dataset_names()) or "folder".
        data_dir: local files (any layout zskt_tf.sources detects); None loads the
            registry dataset through tensorflow-datasets.
        cache_dir: where decoded local files are cached as .npz; defaults to
            ~/.cache/zskt_tf.

    Returns:
        ImageData with 28x28 images padded to 32x32.
    """
    from zskt_tf import sources  # more imports; load them on demand

    if embedded.is_embedded(name):
        images, labels = embedded.load_arrays(name)
        empty = np.zeros((0, *images.shape[1:]), np.uint8)
        return ImageData(get_info(name), empty, np.zeros(0, np.int64), images, labels)
    if name == FOLDER:
        if data_dir is None:
            raise UserError("--dataset=folder needs --data_dir=<split/class/images>")
        arrays = sources.load_local(data_dir, cache_dir, expected=None)
        mean, std = channel_statistics(arrays.train_images)
        info = DatasetInfo(
            FOLDER,
            arrays.class_names,
            tuple(pad_to_32(arrays.test_images[:1]).shape[1:]),
            mean,
            std,
            augment=arrays.test_images.shape[-1] == 3,
        )
    else:
        info = get_info(name)
        if data_dir is None:
            arrays = sources.load_tfds(info)
        else:
            arrays = sources.load_local(data_dir, cache_dir, expected=info)
    return ImageData(
        info,
        pad_to_32(arrays.train_images),
        arrays.train_labels,
        pad_to_32(arrays.test_images),
        arrays.test_labels,
    )


def few_shot_subset(
    images: np.ndarray, labels: np.ndarray, m_per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draws M images per class, reproducibly from the seed (ZSKT Sec. 4.1).

    Args:
        images, labels: the full training split.
        m_per_class: images per class; -1 keeps everything.
        seed: selects the subset.

    Returns:
        (images, labels) of the subset, in the original order.
    """
    if m_per_class == -1:
        return images, labels
    if m_per_class < 1:
        raise UserError(
            f"m_per_class must be positive or -1 (all data), got {m_per_class}"
        )
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if m_per_class > len(members):
            raise UserError(
                f"m_per_class={m_per_class} exceeds the {len(members)} training images "
                f"of class {int(label)}; choose at most {len(members)}"
            )
        chosen.append(rng.choice(members, size=m_per_class, replace=False))
    index = np.sort(np.concatenate(chosen))
    return images[index], labels[index]
