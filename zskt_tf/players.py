"""The teacher and the student of a zero-shot run, from whatever the user has.

Teacher: a zskt_tf run directory (or its weights file), `embedded:<name>`, a `.keras`
file, or a keras.Model in memory. Student: a Wide ResNet (`wrn-D-K`), a `.keras`
file whose architecture is trained from scratch, a keras.Model (cloned, so each seed
starts from its own initialisation) or a function that builds one. Both become
networks the game calls (zskt_tf.networks); the attention pairs between them are
the paper's three group outputs for two Wide ResNets, or pairs by layer name, or
`auto`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import keras
from absl import logging

from zskt_tf import datasets, model_io, networks, pixels
from zskt_tf.errors import UserError
from zskt_tf.wide_resnet import TAPS, check_architecture, wide_resnet

IN_MEMORY = "in-memory:"


@dataclasses.dataclass
class Teacher:
    """A frozen teacher and what a run records about it.

    Attributes:
        model: the keras.Model, trainable = False.
        source: what the user gave (a path, embedded:<name>, in-memory:<name>).
        image_shape, num_classes: its input (H, W, C) and class count.
        scale: its input convention (zskt_tf.pixels).
        wrn: (depth, width) for a zskt_tf Wide ResNet, else None.
        description: "WRN-16-2" or the model's name, class and size.
        record: the teacher run's config.json for zskt_tf teachers, else {}.
    """

    model: keras.Model
    source: str
    image_shape: tuple[int, int, int]
    num_classes: int
    scale: pixels.InputScale
    wrn: tuple[int, int] | None
    description: str
    record: dict

    @property
    def dataset(self) -> str | None:
        return self.record.get("dataset")

    def dataset_info(self, data_info: datasets.DatasetInfo | None = None):
        """The DatasetInfo evaluation uses: the data's class names, the teacher's
        input shape and pixel convention."""
        if self.record and data_info is None:
            return datasets.DatasetInfo.from_json(self.record["dataset_info"])
        names = (
            data_info.class_names
            if data_info is not None
            else tuple(str(k) for k in range(self.num_classes))
        )
        return datasets.DatasetInfo(
            data_info.name if data_info is not None else "none",
            tuple(names),
            tuple(self.image_shape),
            self.scale.mean,
            self.scale.std,
            augment=False,
        )


def _describe(model: keras.Model) -> str:
    return f"{model.name} ({type(model).__name__}, {model.count_params():,} params)"


def load_teacher(
    teacher: str | keras.Model,
    input_scale: str | None = None,
    image_stats: str | None = None,
) -> Teacher:
    """Loads and freezes a teacher given any way the library accepts.

    Args:
        teacher: a run directory, weights file, embedded:<name>, .keras file or a
            keras.Model.
        input_scale: its pixel convention (zskt_tf.pixels.parse); required unless
            the teacher is a zskt_tf run, which records its own.
        image_stats: the pixel statistics the generator's images are read with
            (zskt_tf.pixels.with_image_stats); default the convention's.

    Raises:
        UserError: anything that does not make a usable teacher, in one line.
    """
    if isinstance(teacher, keras.Model):
        model, source, record = teacher, IN_MEMORY + teacher.name, {}
    elif model_io.is_keras_file(teacher):
        model, source, record = model_io.load_keras(teacher, "teacher"), teacher, {}
    else:
        record = model_io.teacher_record(teacher)
        model, source = model_io.load_teacher(teacher), str(teacher)
    model.trainable = False
    image_shape, num_classes = networks.check_classifier(model, "the teacher")
    if record:
        info = datasets.DatasetInfo.from_json(record["dataset_info"])
        scale = (
            pixels.parse(input_scale, image_shape[-1])
            if input_scale
            else pixels.standardising(info.mean, info.std)
        )
        wrn = (record["depth"], record["width"])
        description = f"WRN-{wrn[0]}-{wrn[1]}"
    else:
        if not input_scale:
            raise UserError(
                f"the teacher {source} does not record how its inputs are scaled: "
                f"pass --input_scale ({pixels.FORMS})"
            )
        scale = pixels.parse(input_scale, image_shape[-1])
        wrn, description = None, _describe(model)
    if image_stats:
        scale = pixels.with_image_stats(scale, image_stats)
    return Teacher(
        model, source, image_shape, num_classes, scale, wrn, description, record
    )


WRN_SPEC = re.compile(r"wrn-(\d+)-(\d+)", re.IGNORECASE)


@dataclasses.dataclass
class Student:
    """How to build the student of each seed.

    Attributes:
        build: (image_shape, num_classes, synchronized) -> a new keras.Model with
            its own initialisation (call it after keras.utils.set_random_seed).
        source: "wrn-16-1", a .keras path, or in-memory:<name>.
        wrn: (depth, width) for a Wide ResNet, else None.
    """

    build: Callable[..., keras.Model]
    source: str
    wrn: tuple[int, int] | None


def wrn_student(depth: int, width: int) -> Student:
    check_architecture(depth, width)

    def build(image_shape, num_classes, synchronized=False):
        return wide_resnet(
            depth, width, num_classes, image_shape, "student", synchronized
        )

    return Student(build, f"wrn-{depth}-{width}", (depth, width))


def student_from(spec) -> Student:
    """A Student from "wrn-D-K", a .keras file, a keras.Model or a builder function.

    A model or a .keras file gives the architecture only: every seed's student is a
    keras.models.clone_model of it, freshly initialised from the seed.
    """
    if isinstance(spec, Student):
        return spec
    if isinstance(spec, str):
        match = WRN_SPEC.fullmatch(spec.strip())
        if match:
            return wrn_student(int(match.group(1)), int(match.group(2)))
        if model_io.is_keras_file(spec):
            template = model_io.load_keras(spec, "student")
            return Student(_cloner(template), spec, None)
        raise UserError(
            f"unknown student {spec!r}: give wrn-D-K (e.g. wrn-16-1) or a .keras file"
        )
    if isinstance(spec, keras.Model):
        return Student(_cloner(spec), IN_MEMORY + spec.name, None)
    if callable(spec):
        return Student(
            lambda *_, **__: spec(),
            IN_MEMORY + getattr(spec, "__name__", "builder"),
            None,
        )
    raise UserError(f"cannot use {spec!r} as a student")


def _cloner(template: keras.Model):
    def build(*_, **__):
        try:
            return keras.models.clone_model(template)
        except ValueError as error:
            raise UserError(
                f"cannot re-initialise the student {template.name} "
                f"({str(error).splitlines()[0]}); pass a function that builds it"
            ) from None

    return build


def check_student(model: keras.Model, teacher: Teacher) -> None:
    """The student must take the teacher's images and predict its classes."""
    shape, classes = networks.check_classifier(model, "the student")
    if tuple(shape) != tuple(teacher.image_shape) or classes != teacher.num_classes:
        raise UserError(
            f"the student takes {shape} and predicts {classes} classes but the "
            f"teacher takes {tuple(teacher.image_shape)} and predicts "
            f"{teacher.num_classes}; build the student for the teacher's input and "
            "classes"
        )


def _has_wrn_taps(model) -> bool:
    output = networks.model_output(model)
    return isinstance(output, dict) and all(tap in output for tap in TAPS)


def attention_pairs(
    teacher: Teacher, student_model: keras.Model, spec, beta: float, log=True
) -> list[networks.AttentionPair] | None:
    """The layer pairs whose attention maps the student matches: None for the
    paper's three group outputs (two zskt_tf Wide ResNets and no spec: the paper's
    game, whatever beta), [] for beta 0, else pairs by layer name (`auto`: chosen,
    and printed when log). Names are the given model's: Keras numbers unnamed layers
    per instance, so pairs are resolved on the student that trains.

    Raises:
        UserError: a layer name either network lacks (naming the closest), or no
            pair possible.
    """
    if spec is None and _has_wrn_taps(teacher.model) and _has_wrn_taps(student_model):
        return None
    if not beta:
        return []
    parsed = networks.parse_pairs(spec)
    if parsed == "auto":
        pairs = networks.auto_pairs(teacher.model, student_model, teacher.image_shape)
        if log:
            logging.info(
                "attention pairs (auto, teacher:student): %s",
                ", ".join(map(str, pairs)),
            )
        return pairs
    for pair in parsed:
        networks.find_layer(teacher.model, pair.teacher_layer_name, "the teacher")
        networks.find_layer(student_model, pair.student_layer_name, "the student")
    return parsed


def game_networks(teacher: Teacher, student_model: keras.Model, pairs):
    """(teacher network, student network, key pairs) as the game calls them.

    pairs: attention_pairs()'s answer. Two Wide ResNets with the paper's pairs are
    used as they are (their dict outputs hold the taps); otherwise each model is a
    networks.TappedNetwork returning the paired layers' outputs.
    """
    if pairs is None:
        return teacher.model, student_model, [(tap, tap) for tap in TAPS]
    teacher_net = networks.TappedNetwork(
        teacher.model, [p.teacher_layer_name for p in pairs], what="the teacher"
    )
    student_net = networks.TappedNetwork(
        student_model, [p.student_layer_name for p in pairs], what="the student"
    )
    keys = [
        (teacher_net.key(p.teacher_layer_name), student_net.key(p.student_layer_name))
        for p in pairs
    ]
    networks.log_head(teacher_net, "the teacher")
    return teacher_net, student_net, keys
