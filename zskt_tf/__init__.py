"""zskt_tf: zero-shot knowledge transfer by adversarial belief matching (Keras 3)."""

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
]
