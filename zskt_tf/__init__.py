"""zskt_tf: zero-shot knowledge transfer by adversarial belief matching (Keras 3).

The method: Micaelli & Storkey, "Zero-shot Knowledge Transfer via Adversarial Belief
Matching", NeurIPS 2019, arXiv 1905.09768 (ZSKT); docstrings cite its sections.

import zskt_tf
student = zskt_tf.distill(teacher, student=make_student, input_scale="0,255")
"""

import importlib

from zskt_tf.errors import UserError

__version__ = "0.1.0"

# The API, loaded on first use, so that `import zskt_tf` and the command-line
# programs' --help do not wait for TensorFlow: name -> (module, attribute; None: the
# module itself). zskt_tf.distill, zskt_tf.generator and zskt_tf.wide_resnet are
# modules that can be called as their function (zskt_tf.callable_module):
# zskt_tf.distill(teacher, student, ...) is zskt_tf.api.distill.
_LAZY = {
    "distill": ("zskt_tf.distill", None),
    "generator": ("zskt_tf.generator", None),
    "wide_resnet": ("zskt_tf.wide_resnet", None),
    "train_teacher": ("zskt_tf.teacher", "train_teacher"),
    "load_run": ("zskt_tf.api", "load_run"),
    "export_model": ("zskt_tf.api", "export_model"),
    "make_strategy": ("zskt_tf.distribution", "make_strategy"),
    "DistillConfig": ("zskt_tf.configs", "DistillConfig"),
    "TeacherConfig": ("zskt_tf.configs", "TeacherConfig"),
    "FewShotConfig": ("zskt_tf.configs", "FewShotConfig"),
    "AttentionPair": ("zskt_tf.networks", "AttentionPair"),
    **{
        name: ("zskt_tf.losses", name)
        for name in (
            "attention_loss",
            "attention_map",
            "generator_loss",
            "kd_at_loss",
            "kl_divergence",
            "student_loss",
            "total_attention_loss",
        )
    },
}

__all__ = ["UserError", *_LAZY]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'zskt_tf' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = importlib.import_module(module)
    return value if attribute is None else getattr(value, attribute)


def __dir__():
    return sorted(__all__)
