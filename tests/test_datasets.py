"""Dataset registry, every local layout on files the test writes, tfds mock, errors."""

import gzip
import io
import pathlib
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SHARED_DATASETS
from zskt_tf import datasets, sources
from zskt_tf.errors import UserError


def _write_folder(
    root: pathlib.Path,
    classes=("cat", "dog"),
    per_class=3,
    size=(8, 8),
    mode="RGB",
    suffix=".png",
):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                shape = size + ((3,) if mode == "RGB" else ())
                pixels = rng.integers(0, 255, size=shape, dtype=np.uint8)
                Image.fromarray(pixels, mode).save(folder / f"{i}{suffix}")
    return root


def test_registry_has_the_five_datasets_with_constants():
    assert datasets.dataset_names() == [
        "cifar10",
        "cifar100",
        "fashion_mnist",
        "mnist",
        "svhn",
        "folder",
        "embedded:cifar10-test-2k",
    ]
    cifar = datasets.get_info("cifar10")
    assert cifar.mean == (0.4914, 0.4822, 0.4465)
    assert cifar.std == (0.2023, 0.1994, 0.2010)
    svhn = datasets.get_info("svhn")
    assert svhn.mean == (0.4377, 0.4438, 0.4728) and not svhn.augment
    assert datasets.get_info("cifar100").num_classes == 100
    assert len(set(datasets.CIFAR100_CLASSES)) == 100
    assert datasets.get_info("mnist").image_shape == (32, 32, 1)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UserError, match="unknown dataset 'cifar11'.*cifar10, cifar100"):
        datasets.get_info("cifar11")


def test_tfds_path_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        data = datasets.load_dataset("cifar10")
        mnist = datasets.load_dataset("mnist")
    assert data.train_images.shape == (6, 32, 32, 3)
    assert data.train_images.dtype == np.uint8
    assert data.test_labels.dtype == np.int64
    assert data.info.name == "cifar10"
    assert mnist.train_images.shape == (6, 32, 32, 1)  # 28x28 padded to 32x32


def test_image_folder_and_its_tar(tmp_path):
    root = _write_folder(tmp_path / "tree", classes=("b_dog", "a_cat"))
    data = datasets.load_dataset("folder", root, cache_dir=tmp_path / "cache")
    assert data.info.class_names == ("a_cat", "b_dog")
    assert data.train_images.shape == (6, 8, 8, 3)
    np.testing.assert_array_equal(np.bincount(data.train_labels), [3, 3])
    # Normalisation computed from the training split, recorded in the info.
    expected_mean = data.train_images.reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(data.info.mean, expected_mean, atol=1e-4)
    assert pathlib.Path(next(iter((tmp_path / "cache").glob("*.npz")))).is_file()

    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="mytree")
    from_tar = datasets.load_dataset("folder", archive, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(from_tar.train_images, data.train_images)
    np.testing.assert_array_equal(from_tar.test_labels, data.test_labels)


def test_folder_keeps_registry_label_order(tmp_path):
    root = _write_folder(
        tmp_path / "c",
        classes=datasets.CIFAR10_CLASSES[::-1],
        per_class=1,
        size=(32, 32),
        suffix=".jpg",
    )
    data = datasets.load_dataset("cifar10", root, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(data.train_labels, np.arange(10))


def test_cifar_python_archives(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = {
            "data": rng.integers(0, 255, (4, 3072), dtype=np.uint8),
            "labels": list(rng.integers(0, 10, 4)),
        }
        (folder / name).write_bytes(pickle.dumps(batches[name]))
    meta = {"label_names": list(datasets.CIFAR10_CLASSES)}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    data = datasets.load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")
    assert data.train_images.shape == (20, 32, 32, 3)
    first = batches["data_batch_1"]["data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_array_equal(data.train_images[0], first)
    np.testing.assert_array_equal(data.test_labels, batches["test_batch"]["labels"])

    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    from_tar = datasets.load_dataset("cifar10", archive, cache_dir=tmp_path / "c2")
    np.testing.assert_array_equal(from_tar.train_images, data.train_images)

    c100 = tmp_path / "c100" / "cifar-100-python"
    c100.mkdir(parents=True)
    for name, n in (("train", 6), ("test", 2)):
        (c100 / name).write_bytes(
            pickle.dumps(
                {
                    "data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                    "fine_labels": list(range(n)),
                }
            )
        )
    fine = {"fine_label_names": list(datasets.CIFAR100_CLASSES)}
    (c100 / "meta").write_bytes(pickle.dumps(fine))
    data100 = datasets.load_dataset("cifar100", c100.parent, cache_dir=tmp_path / "c")
    assert data100.train_images.shape == (6, 32, 32, 3)
    assert data100.info.num_classes == 100


def _idx_bytes(array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + array.tobytes()


@pytest.mark.parametrize("gzipped", [True, False])
def test_idx_files(tmp_path, gzipped):
    rng = np.random.default_rng(2)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 255, (5, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(5, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 255, (3, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(3, dtype=np.uint8),
    }
    for name, array in arrays.items():
        data = _idx_bytes(array)
        if gzipped:
            (tmp_path / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (tmp_path / name).write_bytes(data)
    data = datasets.load_dataset("fashion_mnist", tmp_path, cache_dir=tmp_path / "c")
    assert data.train_images.shape == (5, 32, 32, 1)
    np.testing.assert_array_equal(
        data.train_images[:, 2:30, 2:30, 0], arrays["train-images-idx3-ubyte"]
    )
    assert data.train_images[:, :2].max() == 0  # zero padding
    np.testing.assert_array_equal(data.test_labels, [0, 1, 2])


def test_svhn_mat_files(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(3)
    for split, n in (("train", 4), ("test", 2)):
        scipy_io.savemat(
            tmp_path / f"{split}_32x32.mat",
            {
                "X": rng.integers(0, 255, (32, 32, 3, n), dtype=np.uint8),
                "y": np.array([[10], [1], [2], [3]][:n], dtype=np.uint8),
            },
        )
    data = datasets.load_dataset("svhn", tmp_path, cache_dir=tmp_path / "c")
    assert data.train_images.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(data.train_labels, [0, 1, 2, 3])  # 10 means digit 0


def test_second_load_reads_the_cache(tmp_path, monkeypatch):
    root = _write_folder(tmp_path / "tree")
    first = datasets.load_dataset("folder", root, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(sources, "_read_folder", lambda *a: pytest.fail("not cached"))
    second = datasets.load_dataset("folder", root, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(first.train_images, second.train_images)


def test_bad_inputs_give_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        datasets.load_dataset("cifar10", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is empty"):
        datasets.load_dataset("cifar10", tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="no known dataset layout.*image-folder"):
        datasets.load_dataset("cifar10", tmp_path / "junk")
    root = _write_folder(tmp_path / "mismatch")
    (root / "train" / "bird").mkdir()
    Image.new("RGB", (8, 8)).save(root / "train" / "bird" / "0.png")
    with pytest.raises(UserError, match=r"differ between train and test.*\['bird'\]"):
        datasets.load_dataset("folder", root, cache_dir=tmp_path / "c")
    broken = _write_folder(tmp_path / "broken")
    (broken / "test" / "cat" / "9.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"cannot read image .*9\.png"):
        datasets.load_dataset("folder", broken, cache_dir=tmp_path / "c")
    wrong = _write_folder(tmp_path / "three", classes=("a", "b", "c"))
    with pytest.raises(UserError, match="3 class folders but cifar10 has 10"):
        datasets.load_dataset("cifar10", wrong, cache_dir=tmp_path / "c")
    with pytest.raises(UserError, match="needs --data_dir"):
        datasets.load_dataset("folder")
    for error in (UserError("x"),):
        assert "\n" not in str(error)


def test_few_shot_subset_exact_and_reproducible():
    labels = np.repeat(np.arange(10), 50)
    images = np.arange(500)[:, None, None, None].astype(np.uint8)
    sub_x, sub_y = datasets.few_shot_subset(images, labels, 7, seed=3)
    np.testing.assert_array_equal(np.bincount(sub_y), [7] * 10)
    again_x, _ = datasets.few_shot_subset(images, labels, 7, seed=3)
    np.testing.assert_array_equal(sub_x, again_x)
    other_x, _ = datasets.few_shot_subset(images, labels, 7, seed=4)
    assert not np.array_equal(sub_x, other_x)
    all_x, _ = datasets.few_shot_subset(images, labels, -1, seed=0)
    assert len(all_x) == 500
    with pytest.raises(UserError, match="exceeds the 50 training images"):
        datasets.few_shot_subset(images, labels, 51, seed=0)


@pytest.mark.skipif(
    not (SHARED_DATASETS / "cifar10-jpeg.tar.gz").exists(),
    reason="shared CIFAR-10 copy absent (../shared/datasets/cifar10-jpeg.tar.gz)",
)
def test_shared_cifar10_copy(tmp_path_factory):
    data = datasets.load_dataset(
        "cifar10",
        SHARED_DATASETS / "cifar10-jpeg.tar.gz",
        cache_dir=tmp_path_factory.getbasetemp() / "shared-cache",
    )
    assert data.train_images.shape == (50_000, 32, 32, 3)
    assert data.test_images.shape == (10_000, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(data.train_labels), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(data.test_labels), [1000] * 10)


@pytest.mark.skipif(
    not (SHARED_DATASETS / "fashion-mnist").exists(),
    reason="shared Fashion-MNIST copy absent (../shared/datasets/fashion-mnist)",
)
def test_shared_fashion_mnist_copy(tmp_path):
    data = datasets.load_dataset("fashion_mnist", SHARED_DATASETS, cache_dir=tmp_path)
    assert data.train_images.shape == (60_000, 32, 32, 1)
    assert data.test_images.shape == (10_000, 32, 32, 1)
    mean, std = datasets.channel_statistics(data.train_images[:, 2:30, 2:30])
    assert mean == pytest.approx(data.info.mean, abs=1e-3)
    assert std == pytest.approx(data.info.std, abs=1e-3)


def test_unreadable_bytes_message_is_one_line():
    with pytest.raises(UserError) as error:
        sources._decode_image(io.BytesIO(b"xx").getvalue(), "a.png", 3)
    assert "\n" not in str(error.value)
