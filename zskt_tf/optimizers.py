"""Adam and SGD with PyTorch's update rules, which the authors' results come from,
and with gradients summed over replicas *before* clipping.

Keras' Adam adds epsilon to sqrt(v) *after* folding the bias correction into the step
size, so its effective epsilon is PyTorch's times sqrt(1 - beta_2^t): about 30 times
larger on the first step. The zero-shot game's gradients are small enough for that to
show (docs/RESULTS.md, "Parity with the authors' loop"). Keras' SGD keeps an
lr-scaled velocity, PyTorch a raw gradient buffer scaled by the current lr, so the two
differ after every learning-rate change. Both classes keep Keras' variables and
checkpoint layout and change only the arithmetic of the update.

Under tf.distribute, Keras clips each replica's own gradient and only then sums the
replicas'. Here the replicas' gradients are summed first, so that clipping (and
PyTorch's weight decay) act on the global batch's gradient, as on one device. Each
replica's loss must then be its share of the global-batch mean (see
zskt_tf.distribution): the sum is the global batch's gradient.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


class _GlobalBatchGradients:
    """Mixin: all-reduce (sum) the replicas' gradients before clipping, not after."""

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return list(grads_and_vars)  # already summed in _clip_gradients

    def _clip_gradients(self, grads):
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        return self._clip_global_batch_gradients(grads)

    def _clip_global_batch_gradients(self, grads):
        return super()._clip_gradients(grads)


class TorchAdam(_GlobalBatchGradients, keras.optimizers.Adam):
    """Adam as torch.optim.Adam computes it (amsgrad and weight decay unsupported):

    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
    w <- w - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + epsilon)

    global_clipnorm clips as torch.nn.utils.clip_grad_norm_ does, which the authors
    call before every step.
    """

    def __init__(self, learning_rate=1e-3, epsilon: float = 1e-8, **kwargs):
        if kwargs.get("amsgrad") or kwargs.get("weight_decay"):
            raise ValueError("TorchAdam supports neither amsgrad nor weight_decay")
        super().__init__(learning_rate=learning_rate, epsilon=epsilon, **kwargs)

    def _clip_global_batch_gradients(self, grads):
        """global_clipnorm as torch.nn.utils.clip_grad_norm_: scale by
        max_norm / (norm + 1e-6) when that is below 1."""
        if not self.global_clipnorm:
            return super()._clip_global_batch_gradients(grads)
        norm = ops.sqrt(ops.sum(ops.stack([ops.sum(ops.square(g)) for g in grads])))
        scale = ops.minimum(1.0, self.global_clipnorm / (norm + 1e-6))
        return [ops.multiply(g, ops.cast(scale, g.dtype)) for g in grads]

    def _bias_corrections(self):
        """1 - beta^t in float64, as PyTorch computes them in Python floats (Keras
        would round beta_2 = 0.999 to float32 first: a 6e-6 relative step error)."""
        step = ops.cast(self.iterations + 1, "float64")
        return [
            1 - ops.power(ops.convert_to_tensor(beta, "float64"), step)
            for beta in (self.beta_1, self.beta_2)
        ]

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        correction_1, correction_2 = (
            ops.cast(correction, dtype) for correction in self._bias_corrections()
        )
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(
            v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2)
        )
        denominator = ops.add(
            ops.divide(ops.sqrt(v), ops.sqrt(correction_2)), self.epsilon
        )
        self.assign_sub(
            variable, ops.divide(ops.multiply(m, lr / correction_1), denominator)
        )


class TorchSGD(_GlobalBatchGradients, keras.optimizers.SGD):
    """SGD with momentum as torch.optim.SGD computes it (no dampening, no Nesterov):

    g <- g + weight_decay * w;  b <- momentum * b + g (b = g first);  w <- w - lr * b

    weight_decay is PyTorch's (L2 added to the gradient, on every parameter, as in
    the authors' teacher recipe), not Keras' decoupled decay.
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum: float = 0.0,
        torch_weight_decay: float = 0.0,
        **kwargs,
    ):
        if kwargs.get("nesterov") or kwargs.get("weight_decay"):
            raise ValueError(
                "TorchSGD supports neither nesterov nor Keras' weight_decay; use "
                "torch_weight_decay"
            )
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        self.torch_weight_decay = torch_weight_decay

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        if self.torch_weight_decay:
            gradient = ops.add(
                gradient, ops.multiply(variable, self.torch_weight_decay)
            )
        if not self.momentum:
            self.assign_sub(variable, ops.multiply(gradient, lr))
            return
        buffer = self.momentums[self._get_variable_index(variable)]
        # PyTorch starts the buffer at the first gradient; momentum * 0 + g does the
        # same from Keras' zero-initialised buffer.
        self.assign(buffer, ops.add(ops.multiply(buffer, self.momentum), gradient))
        self.assign_sub(variable, ops.multiply(buffer, lr))
