"""Readers for every supported source: tensorflow-datasets and local file layouts.

Local layouts are detected, decoded once and cached as .npz, so a second load takes
seconds. Supported: an image-folder tree ``split/class/*.png|jpg`` (or a .tar.gz of
one), the official CIFAR-10/100 python archives (tar.gz or extracted), MNIST-style
IDX files (gzipped or raw) and SVHN .mat files.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import io
import os
import pathlib
import pickle
import re
import tarfile
import typing

import numpy as np

from zskt_tf.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
SPLITS = ("train", "test")
LAYOUTS = (
    "an image-folder tree train/<class>/*.png|jpg and test/<class>/... (or a .tar.gz "
    "of one), the CIFAR-10/100 python archive (tar.gz or extracted), MNIST-style IDX "
    "files (train-images-idx3-ubyte[.gz], ...), or SVHN train_32x32.mat/test_32x32.mat"
)


class Arrays(typing.NamedTuple):
    train_images: np.ndarray  # uint8 (N, H, W, C)
    train_labels: np.ndarray  # int64 (N,)
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]


def load_tfds(info) -> Arrays:
    """Loads a registry dataset through tensorflow-datasets (downloads on first use)."""
    import tensorflow_datasets as tfds

    arrays = []
    for split in SPLITS:
        dataset = tfds.load(info.tfds_name, split=split, as_supervised=True)
        # Batched iteration rather than batch_size=-1, which aborts the process on
        # datasets of unknown length (tfds.testing.mock_data with TF 2.21).
        chunks = list(tfds.as_numpy(dataset.batch(10_000)))
        arrays.append(np.concatenate([images for images, _ in chunks]).astype(np.uint8))
        arrays.append(np.concatenate([labels for _, labels in chunks]).astype(np.int64))
    return Arrays(*arrays, info.class_names)


# --------------------------------------------------------------------------- detection


def _normalised(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _is_tar(path: pathlib.Path) -> bool:
    return path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar"))


def _tar_names(path: pathlib.Path) -> list[str]:
    with tarfile.open(path) as archive:
        return [m.name for m in archive.getmembers()]


def _find_image_root(names: typing.Iterable[str]) -> str | None:
    """The prefix under which train/ and test/ class folders hold images, if any."""
    roots: dict[str, set[str]] = {}
    for name in names:
        parts = pathlib.PurePosixPath(name).parts
        if len(parts) >= 3 and parts[-1].lower().endswith(IMAGE_SUFFIXES):
            if parts[-3] in SPLITS:
                roots.setdefault("/".join(parts[:-3]), set()).add(parts[-3])
    for root, splits in sorted(roots.items()):
        if splits == set(SPLITS):
            return root
    return None


def detect_layout(path: pathlib.Path) -> str | None:
    """Names the layout at path ("folder", "folder_tar", "cifar", "cifar_tar",
    "idx", "svhn_mat") or None."""
    if _is_tar(path):
        names = _tar_names(path)
        basenames = {pathlib.PurePosixPath(n).name for n in names}
        if "data_batch_1" in basenames or {"train", "test", "meta"} <= basenames:
            return "cifar_tar"
        return "folder_tar" if _find_image_root(names) is not None else None
    if not path.is_dir():
        return None
    files = {p.name for p in path.iterdir()}
    if "data_batch_1" in files or {"train", "test", "meta"} <= files:
        return "cifar"
    if any(n.startswith("train-images-idx3-ubyte") for n in files):
        return "idx"
    if "train_32x32.mat" in files:
        return "svhn_mat"
    if all((path / split).is_dir() for split in SPLITS):
        return "folder"
    for child in ("cifar-10-batches-py", "cifar-100-python"):
        if (path / child).is_dir():
            return "cifar"
    return None


def _resolve(
    data_dir: pathlib.Path, dataset_name: str | None
) -> tuple[pathlib.Path, str]:
    """Finds the layout at data_dir, or in its one child named after the dataset."""
    if not data_dir.exists():
        raise UserError(f"data_dir {data_dir} does not exist; expected {LAYOUTS}")
    if data_dir.is_dir() and not any(data_dir.iterdir()):
        raise UserError(f"data_dir {data_dir} is empty; expected {LAYOUTS}")
    layout = detect_layout(data_dir)
    if layout is not None:
        return data_dir, layout
    if data_dir.is_dir() and dataset_name:
        wanted = _normalised(dataset_name)
        matches = []
        for child in sorted(data_dir.iterdir()):
            name = _normalised(child.name)
            # "cifar10" must not match "cifar100...": the next character is no digit.
            if name.startswith(wanted) and not name[len(wanted) :][:1].isdigit():
                child_layout = detect_layout(child)
                if child_layout is not None:
                    matches.append((child, child_layout))
        if len(matches) == 1:
            return matches[0]
    raise UserError(f"no known dataset layout in {data_dir}; expected {LAYOUTS}")


# --------------------------------------------------------------------------- readers


def _decode_image(data: bytes, name: str, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise UserError(f"cannot read image {name}: {error}") from None
    return array[..., None] if channels == 1 else array


def _image_channels(data: bytes, name: str) -> int:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return 1 if image.mode in ("L", "1", "I;16", "I") else 3
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"cannot read image {name}: {error}") from None


def _decode_folder(
    entries: dict[str, dict[str, list[tuple[str, typing.Callable]]]], expected
) -> Arrays:
    """entries[split][class] = [(name, read_bytes), ...] -> Arrays."""
    train_classes, test_classes = set(entries["train"]), set(entries["test"])
    if train_classes != test_classes:
        raise UserError(
            "class folders differ between train and test: only in train "
            f"{sorted(train_classes - test_classes)}, only in test "
            f"{sorted(test_classes - train_classes)}; both splits need the same classes"
        )
    class_names = tuple(sorted(train_classes))
    if expected is not None:
        if len(class_names) != expected.num_classes:
            raise UserError(
                f"found {len(class_names)} class folders but {expected.name} has "
                f"{expected.num_classes} classes"
            )
        if set(class_names) == set(expected.class_names):
            class_names = expected.class_names  # keep the official label order
    first_name, first_read = entries["train"][class_names[0]][0]
    channels = _image_channels(first_read(), first_name)
    result = []
    for split in SPLITS:
        items = [
            (name, read, label)
            for label, cls in enumerate(class_names)
            for name, read in entries[split][cls]
        ]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            images = list(
                pool.map(lambda it: _decode_image(it[1](), it[0], channels), items)
            )
        shapes = {image.shape for image in images}
        if len(shapes) != 1:
            raise UserError(
                f"images in {split} have different sizes {sorted(shapes)[:3]}; "
                "resize them to one size first"
            )
        result += [np.stack(images), np.array([it[2] for it in items], np.int64)]
    return Arrays(*result, class_names)


def _read_folder(root: pathlib.Path, expected) -> Arrays:
    entries = {}
    for split in SPLITS:
        entries[split] = {}
        for class_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            files = sorted(
                p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
            )
            entries[split][class_dir.name] = [(str(p), p.read_bytes) for p in files]
        if not entries[split]:
            raise UserError(f"{root / split} has no class folders with images")
    return _decode_folder(entries, expected)


def _read_folder_tar(path: pathlib.Path, expected) -> Arrays:
    contents: dict[str, bytes] = {}
    with tarfile.open(path) as archive:
        for member in archive:
            if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):
                contents[member.name] = archive.extractfile(member).read()
    root = _find_image_root(contents)
    prefix = f"{root}/" if root else ""
    entries = {split: {} for split in SPLITS}
    for name in sorted(contents):
        parts = pathlib.PurePosixPath(name[len(prefix) :]).parts
        if name.startswith(prefix) and len(parts) == 3 and parts[0] in SPLITS:
            entries[parts[0]].setdefault(parts[1], []).append(
                (f"{path}:{name}", lambda data=contents[name]: data)
            )
    return _decode_folder(entries, expected)


def _unpickle(data: bytes) -> dict:
    return pickle.loads(data, encoding="latin1")


def _cifar_arrays(files: dict[str, bytes]) -> Arrays:
    """files maps CIFAR python member basenames to their bytes."""
    if "data_batch_1" in files:
        train_names = [f"data_batch_{i}" for i in range(1, 6)]
        test_name, label_key = "test_batch", "labels"
        meta = _unpickle(files["batches.meta"])["label_names"]
    else:
        train_names, test_name, label_key = ["train"], "test", "fine_labels"
        meta = _unpickle(files["meta"])["fine_label_names"]
    arrays = []
    for names in (train_names, [test_name]):
        batches = [_unpickle(files[name]) for name in names]
        data = np.concatenate([b["data"] for b in batches])
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.uint8)
        labels = np.concatenate([b[label_key] for b in batches]).astype(np.int64)
        arrays += [images, labels]
    return Arrays(*arrays, tuple(meta))


def _read_cifar(path: pathlib.Path) -> Arrays:
    for child in ("cifar-10-batches-py", "cifar-100-python"):
        if (path / child).is_dir():
            path = path / child
    return _cifar_arrays(
        {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    )


def _read_cifar_tar(path: pathlib.Path) -> Arrays:
    with tarfile.open(path) as archive:
        files = {
            pathlib.PurePosixPath(m.name).name: archive.extractfile(m).read()
            for m in archive.getmembers()
            if m.isfile()
        }
    return _cifar_arrays(files)


def _read_idx_file(path: pathlib.Path) -> np.ndarray:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise UserError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(
        int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
    )
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _read_idx(path: pathlib.Path, expected) -> Arrays:
    def find(stem):
        for name in (stem, stem + ".gz"):
            if (path / name).is_file():
                return path / name
        raise UserError(f"{path} lacks {stem}[.gz]; expected the four MNIST IDX files")

    arrays = []
    for prefix in ("train", "t10k"):
        images = _read_idx_file(find(f"{prefix}-images-idx3-ubyte"))[..., None]
        labels = _read_idx_file(find(f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        arrays += [images.copy(), labels]
    names = expected.class_names if expected else tuple(map(str, range(10)))
    return Arrays(*arrays, names)


def _read_svhn_mat(path: pathlib.Path) -> Arrays:
    try:
        import scipy.io
    except ImportError:
        raise UserError(
            "reading SVHN .mat files needs scipy: pip install 'zskt_tf[svhn]'"
        ) from None
    arrays = []
    for split in SPLITS:
        mat = scipy.io.loadmat(path / f"{split}_32x32.mat")
        images = np.ascontiguousarray(mat["X"].transpose(3, 0, 1, 2)).astype(np.uint8)
        labels = mat["y"].reshape(-1).astype(np.int64) % 10  # SVHN stores digit 0 as 10
        arrays += [images, labels]
    return Arrays(*arrays, tuple(map(str, range(10))))


# --------------------------------------------------------------------------- caching


def default_cache_dir() -> pathlib.Path:
    return pathlib.Path.home() / ".cache" / "zskt_tf"


def _cache_key(path: pathlib.Path, layout: str) -> str:
    stats = []
    targets = [path] if path.is_file() else sorted(path.rglob("*"))[:5000]
    for target in targets:
        if target.is_file():
            stat = target.stat()
            stats.append(f"{target}:{stat.st_size}:{stat.st_mtime_ns}")
    digest = hashlib.sha1("\n".join([layout, str(path.resolve()), *stats]).encode())
    return f"{_normalised(path.name)[:40]}-{digest.hexdigest()[:16]}"


def load_local(data_dir, cache_dir=None, expected=None) -> Arrays:
    """Detects the layout under data_dir, decodes it (or reads the cache) and checks it.

    Args:
        data_dir: a directory or archive in one of the supported layouts, or a
            directory holding exactly one such child named after the dataset.
        cache_dir: where the decoded arrays are cached; ~/.cache/zskt_tf by default.
        expected: the DatasetInfo the files should match, or None for "folder".
    """
    path, layout = _resolve(pathlib.Path(data_dir), expected.name if expected else None)
    cache = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
    cache_file = cache / f"{_cache_key(path, layout)}.npz"
    if cache_file.is_file():
        with np.load(cache_file) as npz:
            arrays = Arrays(
                *(npz[key] for key in Arrays._fields[:4]),
                tuple(str(name) for name in npz["class_names"]),
            )
    else:
        if layout in ("folder", "folder_tar"):
            reader = _read_folder if layout == "folder" else _read_folder_tar
            arrays = reader(path, expected)
        else:
            arrays = {
                "cifar": _read_cifar,
                "cifar_tar": _read_cifar_tar,
                "idx": lambda p: _read_idx(p, expected),
                "svhn_mat": _read_svhn_mat,
            }[layout](path)
        cache.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(partial, **arrays._asdict())
        os.replace(partial, cache_file)  # atomic: a reader never sees half a cache
    _check(arrays, expected, path)
    return arrays


def _check(arrays: Arrays, expected, path) -> None:
    if expected is None:
        return
    found = int(max(arrays.train_labels.max(), arrays.test_labels.max())) + 1
    if found > expected.num_classes or len(arrays.class_names) != expected.num_classes:
        raise UserError(
            f"{path} holds {max(found, len(arrays.class_names))} classes but "
            f"{expected.name} has {expected.num_classes}; is this the right dataset?"
        )
    channels = arrays.train_images.shape[-1]
    if channels != expected.image_shape[-1]:
        raise UserError(
            f"{path} holds {channels}-channel images but {expected.name} has "
            f"{expected.image_shape[-1]}"
        )
