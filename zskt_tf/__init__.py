"""zskt_tf: zero-shot knowledge transfer by adversarial belief matching (Keras 3).

import zskt_tf
student = zskt_tf.distill(teacher, student=make_student, input_scale="0,255")
"""

import importlib

from zskt_tf.errors import UserError
from zskt_tf.generator import generator
from zskt_tf.losses import (
    attention_loss,
    attention_map,
    generator_loss,
    kd_at_loss,
    kl_divergence,
    student_loss,
    total_attention_loss,
)
from zskt_tf.wide_resnet import wide_resnet

__version__ = "0.1.0"

# The rest of the API, loaded on first use: name -> (module, attribute; None: the
# module itself). zskt_tf.distill is the module zskt_tf.distill, which is callable:
# zskt_tf.distill(teacher, student, ...) is zskt_tf.api.distill.
_LAZY = {
    "distill": ("zskt_tf.distill", None),
    "train_teacher": ("zskt_tf.teacher", "train_teacher"),
    "load_run": ("zskt_tf.api", "load_run"),
    "export_model": ("zskt_tf.api", "export_model"),
    "make_strategy": ("zskt_tf.distribution", "make_strategy"),
    "DistillConfig": ("zskt_tf.configs", "DistillConfig"),
    "TeacherConfig": ("zskt_tf.configs", "TeacherConfig"),
    "FewShotConfig": ("zskt_tf.configs", "FewShotConfig"),
    "AttentionPair": ("zskt_tf.networks", "AttentionPair"),
}

__all__ = [
    "UserError",
    "attention_loss",
    "attention_map",
    "generator",
    "generator_loss",
    "kd_at_loss",
    "kl_divergence",
    "student_loss",
    "total_attention_loss",
    "wide_resnet",
    *_LAZY,
]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'zskt_tf' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = importlib.import_module(module)
    return value if attribute is None else getattr(value, attribute)


def __dir__():
    return sorted(__all__)
