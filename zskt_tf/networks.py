"""Any Keras classifier as a player of the game: its logits and named inner outputs
(attention taps, BatchNorm inputs) from one forward pass.

A zskt_tf Wide ResNet returns {"logits", "block1", "block2", "block3"} itself. Any
other model (functional, Sequential, nested, or subclassed once it has been built) is
wrapped in a TappedNetwork, which records what named layers see while the model
runs: each such layer's `call` is wrapped for the duration of the call only, so the
model is unchanged outside it and the recorded tensors belong to the same forward
pass (and, under tf.function, the same graph) as the logits. Layers are named by
path ("backbone/block_6_expand_relu") or by a name unique across the nesting, the
vocabulary of keras.distillation.FeatureDistillation(teacher_layer_name=...,
student_layer_name=...).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
from collections.abc import Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from zskt_tf.errors import UserError

LOGITS = "logits"
TAP_PREFIX = "tap:"
BN_INPUT_PREFIX = "bn_input:"
# A softmax head that cannot be undone exactly gives log-probabilities clipped
# here, so that a probability float32 rounds to 0 keeps the KL finite.
_TINY_PROBABILITY = 1e-30


def _sublayers(layer) -> list:
    return list(getattr(layer, "layers", None) or [])


def layer_paths(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """Every layer inside model, nested models included (and the nested models
    themselves), by path "outer_layer/inner_layer", in the models' layer order."""
    paths = {}

    def visit(layer, prefix):
        for child in _sublayers(layer):
            path = f"{prefix}{child.name}"
            paths[path] = child
            visit(child, f"{path}/")

    visit(model, "")
    return paths


def find_layer(model: keras.Model, name: str, what: str) -> tuple[str, object]:
    """(path, layer) of a layer given by its path or by a name unique in the model.

    Raises:
        UserError: no such layer (naming the closest names), or an ambiguous name.
    """
    paths = layer_paths(model)
    if name in paths:
        return name, paths[name]
    matches = [path for path in paths if path.rsplit("/", 1)[-1] == name]
    if len(matches) == 1:
        return matches[0], paths[matches[0]]
    if matches:
        raise UserError(
            f"{what} has several layers named {name!r} ({', '.join(matches[:4])}); "
            "give its path"
        )
    names = list(dict.fromkeys([*paths, *(p.rsplit("/", 1)[-1] for p in paths)]))
    closest = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
    hint = f"; closest: {', '.join(closest)}" if closest else ""
    raise UserError(f"{what} has no layer {name!r}{hint}")


def batch_norm_layers(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """The BatchNormalization layers of model, nested ones included, by path."""
    return {
        path: layer
        for path, layer in layer_paths(model).items()
        if isinstance(layer, keras.layers.BatchNormalization)
    }


def _is_softmax(function) -> bool:
    return function is keras.activations.softmax or (
        getattr(function, "__name__", "") == "softmax"
    )


def _final_layer(model):
    """The layer whose output is model's output, looking inside nested models."""
    layer = None
    outputs = getattr(model, "outputs", None)
    if outputs and len(outputs) == 1:
        layer = getattr(getattr(outputs[0], "_keras_history", None), "operation", None)
    if layer is None and _sublayers(model):
        layer = _sublayers(model)[-1]
    if layer is not None and _sublayers(layer):
        return _final_layer(layer)
    return layer


def softmax_head(model: keras.Model):
    """How model ends in a softmax, if its structure says so: ("input", layer) for
    a Softmax or Activation("softmax") layer, whose input is the logits;
    ("activation", layer) for a layer with activation="softmax", whose output
    before the activation is; None otherwise."""
    layer = _final_layer(model)
    if isinstance(layer, keras.layers.Softmax):
        return ("input", layer)
    if isinstance(layer, keras.layers.Activation) and _is_softmax(layer.activation):
        return ("input", layer)
    if _is_softmax(getattr(layer, "activation", None)):
        return ("activation", layer)
    return None


class _Recorder:
    """Wraps the `call` of chosen layers for one forward pass and keeps what they
    see, by key: their input ("in") or output ("out"). A softmax head also yields
    the logits under LOGITS."""

    def __init__(self, watch=(), head=None):
        self.watch: list[tuple[object, str, str]] = list(watch)  # (layer, key, side)
        self.head = head

    def _wrapped(self, layer, original, seen: dict):
        entries = [(key, side) for watched, key, side in self.watch if watched is layer]
        head = self.head if self.head and self.head[1] is layer else None

        def call(*args, **kwargs):
            for key, side in entries:
                if side == "in":
                    seen[key] = args[0]
            if head and head[0] == "activation":
                activation = layer.activation
                layer.activation = keras.activations.linear
                try:
                    seen[LOGITS] = original(*args, **kwargs)
                finally:
                    layer.activation = activation
                outputs = activation(seen[LOGITS])
            else:
                if head:
                    seen[LOGITS] = args[0]
                outputs = original(*args, **kwargs)
            for key, side in entries:
                if side == "out":
                    seen[key] = outputs
            return outputs

        return call

    @contextlib.contextmanager
    def recording(self):
        """Yields the dict that fills while the model is called inside the block.
        A dict keeps the order of first insertion: the order the layers ran in."""
        seen = {}
        layers = {id(layer): layer for layer, _, _ in self.watch}
        if self.head:
            layers[id(self.head[1])] = self.head[1]
        patched = []
        try:
            for layer in layers.values():
                # An instance attribute shadows the class's method until deleted.
                layer.call = self._wrapped(layer, layer.call, seen)
                patched.append(layer)
            yield seen
        finally:
            for layer in patched:
                del layer.call


class TappedNetwork:
    """A Keras classifier called as the game calls its players.

    __call__(images, training) returns {"logits": ..., "tap:<path>": ...,
    "bn_input:<path>": ...}: the logits (log-probabilities for a softmax head), the
    outputs of the tap layers and, with batch_norm_inputs, the input of every
    BatchNormalization layer, all from the one forward pass. A model with a dict
    output (a zskt_tf Wide ResNet) keeps its own keys beside these.

    Args:
        model: a keras.Model ending in one (batch, classes) output, logits or a
            softmax, or a dict output holding "logits".
        taps: layer paths or unique names whose outputs to return.
        batch_norm_inputs: also return each BatchNormalization layer's input.
        what: how error messages name the model ("the teacher").
    """

    def __init__(
        self,
        model: keras.Model,
        taps: Sequence[str] = (),
        batch_norm_inputs: bool = False,
        what: str = "the model",
    ):
        self.model, self.name, self.taps = model, model.name, tuple(taps)
        self.batch_norm_inputs = batch_norm_inputs
        watch, self.tap_keys = [], []
        for tap in taps:
            path, layer = find_layer(model, tap, what)
            watch.append((layer, TAP_PREFIX + path, "out"))
            self.tap_keys.append(TAP_PREFIX + path)
        self.bn_layers, self.bn_keys = [], []
        if batch_norm_inputs:
            for path, layer in batch_norm_layers(model).items():
                watch.append((layer, BN_INPUT_PREFIX + path, "in"))
                self.bn_layers.append(layer)
                self.bn_keys.append(BN_INPUT_PREFIX + path)
        self.dict_output = isinstance(model_output(model), dict)
        self.softmax = None if self.dict_output else softmax_head(model)
        self._recorder = _Recorder(watch, self.softmax)
        self.probabilities = False
        if not self.dict_output and self.softmax is None:
            self.probabilities = _outputs_probabilities(model)

    def key(self, tap: str) -> str:
        """The output key of a tap given as in `taps`."""
        return self.tap_keys[self.taps.index(tap)]

    # What the game, the checkpoints and Keras' export ask of a model.
    @property
    def trainable_variables(self):
        return self.model.trainable_variables

    @property
    def trainable_weights(self):
        return self.model.trainable_weights

    @property
    def trainable(self):
        return self.model.trainable

    @property
    def inputs(self):
        return self.model.inputs

    @property
    def output(self):
        return model_output(self.model)

    def __call__(self, images, training: bool = False) -> dict:
        with self._recorder.recording() as seen:
            outputs = self.model(images, training=training)
        if self.dict_output:
            result = dict(outputs)
        elif LOGITS in seen:  # a softmax head, undone exactly
            result = {LOGITS: tf.nn.log_softmax(seen.pop(LOGITS))}
        elif self.probabilities:
            floor = tf.cast(_TINY_PROBABILITY, outputs.dtype)
            result = {LOGITS: tf.math.log(tf.maximum(outputs, floor))}
        else:
            result = {LOGITS: outputs}
        result.update(seen)
        return result


def _outputs_probabilities(model: keras.Model) -> bool:
    """Whether model's outputs are probabilities, for a head its structure does
    not reveal: every row of a probe batch in [0, 1] and summing to 1."""
    shape = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else ()
    if len(shape) != 3 or None in shape:
        return False
    probe = np.random.default_rng(0).normal(size=(4, *shape)).astype(np.float32)
    outputs = np.asarray(model(probe, training=False), np.float64)
    return bool(
        outputs.min() >= 0.0
        and outputs.max() <= 1.0
        and np.allclose(outputs.sum(-1), 1.0, atol=1e-3)
    )


def model_output(model):
    """The model's symbolic output structure (a Sequential has only `outputs`)."""
    try:
        return model.output
    except AttributeError:
        outputs = model.outputs
        return outputs[0] if len(outputs) == 1 else outputs


def class_count(model) -> int:
    """The number of classes a classifier (or a TappedNetwork) predicts."""
    output = model_output(getattr(model, "model", model))
    if isinstance(output, dict):
        output = output[LOGITS]
    return int(output.shape[-1])


def check_classifier(model, what: str) -> tuple[tuple, int]:
    """Checks that model is one image classifier; returns (input shape, classes).

    Raises:
        UserError: several inputs or outputs, a dict output without "logits", an
            input that is not (H, W, C) with C 1 or 3 and H, W >= 8, or an output
            that is not (batch, classes).
    """
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise UserError(
            f"{what} ({model.name}) has no known input: give a functional or "
            "Sequential model, or wrap a subclassed one: "
            "keras.Sequential([keras.Input(shape), model])"
        )
    if len(inputs) != 1:
        raise UserError(
            f"{what} has {len(inputs)} inputs; zero-shot distillation needs one "
            "image input"
        )
    shape = tuple(inputs[0].shape[1:])
    if (
        len(shape) != 3
        or None in shape
        or shape[-1] not in (1, 3)
        or min(shape[:2]) < 8
    ):
        raise UserError(
            f"{what} takes inputs of shape {shape}; it must take images (H, W, C) "
            "with C = 1 or 3 and H, W >= 8"
        )
    output = model_output(model)
    if isinstance(output, dict):
        if LOGITS not in output:
            raise UserError(
                f"{what} returns a dict without 'logits' ({', '.join(output)}); "
                "return the class logits under 'logits' or as the only output"
            )
        output = output[LOGITS]
    elif isinstance(output, (list, tuple)):
        raise UserError(
            f"{what} has {len(output)} outputs; distillation needs one classifier "
            "output: pass keras.Model(model.input, model.outputs[k])"
        )
    if len(output.shape) != 2 or not output.shape[-1] or output.shape[-1] < 2:
        raise UserError(
            f"{what} outputs shape {tuple(output.shape)}; it must output "
            "(batch, classes) logits or probabilities"
        )
    return shape, int(output.shape[-1])


def log_head(network: TappedNetwork, what: str) -> None:
    """Says once in the log how the game reads a softmax-ended network."""
    if network.softmax is not None:
        logging.info(
            "%s ends in a softmax (layer %s): the game uses its log-probabilities",
            what,
            network.softmax[1].name,
        )
    elif network.probabilities:
        logging.info("%s outputs probabilities: the game uses their logarithms", what)


_BORDER_LAYERS = (
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Cropping3D,
)


def probe_feature_maps(model: keras.Model, input_shape) -> list[tuple[str, tuple]]:
    """(path, (H, W)) of every leaf layer's 4-D output, in the order the layers run
    on one forward pass (inference mode, two blank images), from the first layer
    with weights on: what comes before it (Rescaling, Normalization, resizing) is
    still the image, not a feature map. Padding and cropping layers are left out:
    their output is the previous map with a border added or taken away, not a
    feature map of its own (a WRN pads 32x32 to 34x34 before each convolution)."""
    paths = layer_paths(model)
    leaves = [
        (layer, path, "out")
        for path, layer in paths.items()
        if not _sublayers(layer) and not isinstance(layer, _BORDER_LAYERS)
    ]
    with _Recorder(leaves).recording() as seen:
        model(np.zeros((2, *input_shape), np.float32), training=False)
    maps, started = [], False
    for path, value in seen.items():
        started = started or bool(paths[path].weights)
        if started and len(getattr(value, "shape", ())) == 4:
            maps.append((path, tuple(value.shape[1:3])))
    return maps


@dataclasses.dataclass(frozen=True)
class AttentionPair:
    """A teacher layer and a student layer whose attention maps are matched,
    named as keras.distillation.FeatureDistillation names them."""

    teacher_layer_name: str
    student_layer_name: str

    def __str__(self) -> str:
        return f"{self.teacher_layer_name}:{self.student_layer_name}"


def parse_pairs(spec) -> list[AttentionPair] | str:
    """'auto', 't1:s1,t2:s2', or a list of (teacher, student) tuples,
    AttentionPairs or keras.distillation.FeatureDistillation objects -> "auto" or
    the pairs."""
    if spec is None or (isinstance(spec, str) and spec.strip() == "auto"):
        return "auto"
    items: Iterable = spec.split(",") if isinstance(spec, str) else spec
    pairs = []
    for item in items:
        if isinstance(item, str):
            teacher, separator, student = item.strip().partition(":")
            if not separator or not teacher or not student:
                raise UserError(
                    f"attention pair {item!r} must be teacher_layer:student_layer"
                )
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            teacher, student = item
        elif hasattr(item, "teacher_layer_name"):
            teacher, student = item.teacher_layer_name, item.student_layer_name
        else:
            raise UserError(f"cannot read {item!r} as an attention pair")
        pairs.append(AttentionPair(str(teacher), str(student)))
    if not pairs:
        raise UserError("give at least one attention pair, or 'auto'")
    return pairs


def auto_pairs(
    teacher: keras.Model, student: keras.Model, input_shape
) -> list[AttentionPair]:
    """At each spatial size (larger than 1x1) that both networks' feature maps
    have, the last 4-D output of each at that size; largest size first.

    Raises:
        UserError: no size is shared, naming both networks' candidates.
    """
    last = []
    for model in (teacher, student):
        by_size = {}
        for path, size in probe_feature_maps(model, input_shape):
            if size != (1, 1):
                by_size[size] = path
        last.append(by_size)
    shared = sorted(set(last[0]) & set(last[1]), reverse=True)
    if not shared:
        raise UserError(
            "no attention pair possible: the networks share no feature-map size "
            f"(teacher: {_candidates(last[0])}; student: {_candidates(last[1])}); "
            "pass --attention_pairs=teacher_layer:student_layer,... or --beta=0"
        )
    return [AttentionPair(last[0][size], last[1][size]) for size in shared]


def _candidates(by_size: dict) -> str:
    if not by_size:
        return "no 4-D layer outputs"
    return ", ".join(
        f"{path} ({h}x{w})" for (h, w), path in sorted(by_size.items(), reverse=True)
    )
