"""Import of PyTorch WRN checkpoints in the authors' key layout."""

import json

import numpy as np
import pytest

from tests.helpers import user_error
from zskt_tf import model_io, torch_import
from zskt_tf.errors import UserError

torch = pytest.importorskip("torch")
from tests.torch_reference import randomised_wrn as _randomised  # noqa: E402


@pytest.mark.parametrize("depth, width", [(16, 2), (10, 1)])
def test_imported_teacher_matches_pytorch(tmp_path, depth, width):
    net = _randomised(depth, width)
    path = tmp_path / "last.pth.tar"
    torch.save({"epoch": 200, "state_dict": net.state_dict()}, path)
    out = torch_import.import_checkpoint(path, depth, width, "cifar10", tmp_path / "t")
    keras_model = model_io.load_teacher(out)
    images = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    actual = keras_model(images, training=False)
    np.testing.assert_allclose(actual["logits"].numpy(), expected[0].numpy(), atol=1e-4)
    for name, tensor in zip(("block1", "block2", "block3"), expected[1:], strict=True):
        np.testing.assert_allclose(
            actual[name].numpy(),
            tensor.numpy().transpose(0, 2, 3, 1),
            atol=1e-4,
            err_msg=name,
        )
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "teacher" and (config["depth"], config["width"]) == (
        depth,
        width,
    )


def test_bare_state_dict_and_dataparallel_prefix(tmp_path):
    net = _randomised(10, 1, seed=3)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save(state, tmp_path / "bare.pth")
    model = torch_import.convert(
        torch_import.read_state_dict(tmp_path / "bare.pth"), 10, 1
    )
    images = np.zeros((1, 32, 32, 3), np.float32)
    with torch.no_grad():
        expected = net(torch.zeros(1, 3, 32, 32))[0].numpy()
    np.testing.assert_allclose(
        model(images, training=False)["logits"], expected, atol=1e-4
    )


def test_mismatch_names_the_first_key_with_shapes(tmp_path):
    torch.save({"state_dict": _randomised(16, 1).state_dict()}, tmp_path / "w1.pth")
    state = torch_import.read_state_dict(tmp_path / "w1.pth")
    with pytest.raises(
        UserError,
        match=r"block1\.layer\.0\.conv1\.weight expected "
        r"shape \(32, 16, 3, 3\), found \(16, 16, 3, 3\)",
    ):
        torch_import.convert(state, 16, 2)
    with pytest.raises(UserError, match=r"missing key block1\.layer\.2\.bn1\.weight"):
        torch_import.convert(state, 22, 1)
    with pytest.raises(UserError, match=r"unexpected key block1\.layer\.1"):
        torch_import.convert(state, 10, 1)
    stderr = user_error(
        "zskt-tf-import-torch",
        f"--checkpoint={tmp_path / 'w1.pth'}",
        "--depth=16",
        "--width=2",
        f"--output_dir={tmp_path / 'o'}",
    )
    assert "expected shape (32, 16, 3, 3), found (16, 16, 3, 3)" in stderr


def test_pickled_python_objects_need_trust(tmp_path):
    import argparse

    net = _randomised(10, 1)
    torch.save(
        {"args": argparse.Namespace(lr=0.1), "state_dict": net.state_dict()},
        tmp_path / "args.pth",
    )
    with pytest.raises(UserError, match="--trust_checkpoint"):
        torch_import.read_state_dict(tmp_path / "args.pth")
    assert "conv1.weight" in torch_import.read_state_dict(
        tmp_path / "args.pth", trust=True
    )


def test_missing_torch_gives_the_extra_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch":
            raise ImportError("no torch")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(UserError, match=r"pip install 'zskt_tf\[torch\]'"):
        torch_import.read_state_dict("whatever.pth")
