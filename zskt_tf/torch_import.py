"""Import of the authors' PyTorch Wide ResNet checkpoints into a teacher directory.

Their WRN's state_dict keys are conv1, block<g>.layer.<i>.{bn1,conv1,bn2,conv2,
convShortcut}, bn1 and fc, with PyTorch layouts: conv (out, in, kh, kw), linear
(out, in). PyTorch is imported only here and only when this module is used.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from zskt_tf import datasets, model_io, runs
from zskt_tf.errors import UserError
from zskt_tf.wide_resnet import check_architecture, wide_resnet

BN_FIELDS = (
    ("weight", "gamma"),
    ("bias", "beta"),
    ("running_mean", "moving_mean"),
    ("running_var", "moving_variance"),
)


def _import_torch():
    try:
        import torch
    except ImportError:
        raise UserError(
            "importing PyTorch checkpoints needs PyTorch: pip install 'zskt_tf[torch]'"
        ) from None
    return torch


def key_map(depth: int, width: int) -> list[tuple[str, str, str]]:
    """(torch key prefix, Keras layer name, kind) for every layer with weights.

    kind is "conv", "bn" or "dense".
    """
    blocks = check_architecture(depth, width)
    entries = [("conv1", "stem_conv", "conv")]
    for group in (1, 2, 3):
        channels_in = 16 if group == 1 else 16 * width * 2 ** (group - 2)
        for block in range(blocks):
            torch_prefix = f"block{group}.layer.{block}"
            keras_prefix = f"group{group}_block{block}"
            entries += [
                (f"{torch_prefix}.bn1", f"{keras_prefix}_1_bn", "bn"),
                (f"{torch_prefix}.conv1", f"{keras_prefix}_conv1", "conv"),
                (f"{torch_prefix}.bn2", f"{keras_prefix}_2_bn", "bn"),
                (f"{torch_prefix}.conv2", f"{keras_prefix}_conv2", "conv"),
            ]
            if block == 0 and channels_in != 16 * width * 2 ** (group - 1):
                entries.append(
                    (f"{torch_prefix}.convShortcut", f"{keras_prefix}_shortcut", "conv")
                )
    entries += [("bn1", "head_bn", "bn"), ("fc", "logits", "dense")]
    return entries


def _expected_tensors(model, entries) -> dict[str, tuple[str, int, tuple]]:
    """torch key -> (Keras layer, variable index, torch-layout shape)."""
    expected = {}
    for torch_prefix, layer_name, kind in entries:
        layer = model.get_layer(layer_name)
        if kind == "conv":
            kh, kw, cin, cout = layer.kernel.shape
            expected[f"{torch_prefix}.weight"] = (layer_name, 0, (cout, cin, kh, kw))
        elif kind == "dense":
            cin, cout = layer.kernel.shape
            expected[f"{torch_prefix}.weight"] = (layer_name, 0, (cout, cin))
            expected[f"{torch_prefix}.bias"] = (layer_name, 1, (cout,))
        else:
            for index, (torch_field, _) in enumerate(BN_FIELDS):
                shape = tuple(layer.gamma.shape)
                expected[f"{torch_prefix}.{torch_field}"] = (layer_name, index, shape)
    return expected


def read_state_dict(
    path: str | pathlib.Path, trust: bool = False
) -> dict[str, np.ndarray]:
    """Reads a checkpoint (a dict with 'state_dict', or a bare state_dict) as NumPy.

    Args:
        path: the .pth / .pth.tar file.
        trust: allow full unpickling (needed when the checkpoint also stores Python
            objects such as argparse arguments). Only for files you trust.
    """
    torch = _import_torch()
    path = pathlib.Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as error:  # torch raises several types for foreign pickles
        hint = (
            ""
            if trust
            else (
                " If you trust this file, rerun with "
                "--trust_checkpoint to allow full unpickling."
            )
        )
        raise UserError(
            f"cannot read {path}: {str(error).splitlines()[0]}.{hint}"
        ) from None
    state = (
        checkpoint.get("state_dict", checkpoint)
        if isinstance(checkpoint, dict)
        else None
    )
    if not isinstance(state, dict):
        raise UserError(
            f"{path} holds no state_dict (found {type(checkpoint).__name__})"
        )
    arrays = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked") or not hasattr(value, "numpy"):
            continue
        key = (
            key[len("module.") :] if key.startswith("module.") else key
        )  # DataParallel
        arrays[key] = value.detach().cpu().numpy()
    return arrays


def convert(
    state: dict[str, np.ndarray],
    depth: int,
    width: int,
    num_classes: int = 10,
    input_shape=(32, 32, 3),
):
    """Builds WRN-depth-width and fills it from a torch state dict.

    Raises:
        UserError: naming the first key that is missing, unexpected or misshapen.
    """
    model = wide_resnet(depth, width, num_classes, input_shape)
    expected = _expected_tensors(model, key_map(depth, width))
    for key, (_, _, shape) in expected.items():
        if key not in state:
            raise UserError(
                f"checkpoint does not fit WRN-{depth}-{width}: missing key "
                f"{key} (expected shape {shape})"
            )
        if tuple(state[key].shape) != shape:
            raise UserError(
                f"checkpoint does not fit WRN-{depth}-{width}: {key} expected shape "
                f"{shape}, found {tuple(state[key].shape)}"
            )
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        raise UserError(
            f"checkpoint does not fit WRN-{depth}-{width}: unexpected key "
            f"{unexpected[0]} (a deeper or different network?)"
        )
    values: dict[str, list] = {}
    for key, (layer_name, index, _) in expected.items():
        array = state[key]  # set_weights casts to the model's variable dtype
        if array.ndim == 4:
            array = array.transpose(
                2, 3, 1, 0
            )  # (out, in, kh, kw) -> (kh, kw, in, out)
        elif array.ndim == 2:
            array = array.T  # (out, in) -> (in, out)
        values.setdefault(layer_name, {})[index] = array
    for layer_name, by_index in values.items():
        layer = model.get_layer(layer_name)
        layer.set_weights([by_index[i] for i in range(len(layer.get_weights()))])
    return model


def import_checkpoint(
    checkpoint: str | pathlib.Path,
    depth: int,
    width: int,
    dataset: str,
    output_dir: str | pathlib.Path,
    trust: bool = False,
) -> pathlib.Path:
    """Writes a teacher directory, in zskt-tf-teacher's format, from a torch checkpoint.

    Returns:
        The output directory, ready for zskt-tf-distill --teacher.
    """
    from zskt_tf.teacher import TeacherConfig

    info = datasets.get_info(dataset)
    model = convert(
        read_state_dict(checkpoint, trust),
        depth,
        width,
        info.num_classes,
        info.image_shape,
    )
    output_dir = pathlib.Path(output_dir)
    config = TeacherConfig(
        output_dir=str(output_dir), dataset=dataset, depth=depth, width=width
    )
    record = dataclasses.asdict(config) | {
        "kind": "teacher",
        "epochs": config.resolved_epochs(),
        "num_classes": info.num_classes,
        "input_shape": list(info.image_shape),
        "dataset_info": info.to_json(),
        "imported_from": str(pathlib.Path(checkpoint).resolve()),
    }
    if (output_dir / runs.CONFIG_FILE).exists() or (
        output_dir.exists() and any(output_dir.iterdir())
    ):
        raise UserError(
            f"{output_dir} already exists and is not empty; choose a new --output_dir"
        )
    runs.prepare_output_dir(output_dir, record)
    model_io.save_weights(model, output_dir / model_io.TEACHER_WEIGHTS)
    return output_dir
