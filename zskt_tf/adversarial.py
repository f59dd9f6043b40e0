"""The zero-shot outer iteration (reference sections 2-3): one compiled function that
takes n_g generator steps and then n_s student steps on the same pseudo batch."""

from __future__ import annotations

import keras
import tensorflow as tf

from zskt_tf import distribution, losses, schedules
from zskt_tf.configs import ADVERSARIAL_LOSSES, GameConfig  # noqa: F401 (re-exported)
from zskt_tf.optimizers import TorchAdam
from zskt_tf.wide_resnet import TAPS

# PyTorch's Adam epsilon (Keras defaults to 1e-7); the authors use torch defaults.
ADAM_EPSILON = 1e-8
# Every run logs these; bn_prior and balance_prior add their own terms.
METRICS = (
    "train/generator_loss",
    "train/generator_kl",
    "train/student_loss",
    "train/kl",
    "train/attention",
    "train/teacher_max_prob",
    "train/student_max_prob",
)


def adam(learning_rate: float, grad_clip: float, mixed_precision: bool):
    """The authors' optimiser: PyTorch's Adam, gradients clipped to norm grad_clip.

    global_clipnorm clips after loss-scale unscaling, so the same code is right in
    float32 and mixed precision (clip by global norm 5, section 3).
    """
    optimizer = TorchAdam(
        learning_rate=learning_rate, epsilon=ADAM_EPSILON, global_clipnorm=grad_clip
    )
    if mixed_precision:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _taps(outputs) -> list:
    return [outputs[name] for name in TAPS]


def _mean_max_prob(logits):
    probabilities = tf.nn.softmax(losses.at_least_float32(logits))
    return tf.reduce_mean(tf.reduce_max(probabilities, -1))


BN_INPUT_PREFIX = "bn_input:"


def with_batchnorm_inputs(teacher: keras.Model) -> tuple[keras.Model, list]:
    """The teacher that also returns the input of each of its BatchNorm layers.

    A functional model built once on the same layers and weights: its extra outputs
    are intermediate tensors of the one forward pass (no second pass). Outputs are
    the teacher's dict plus "bn_input:<layer name>" entries.

    Returns:
        (the frozen model, its BatchNormalization layers in output order).
    """
    layers = [
        layer
        for layer in teacher.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    outputs = dict(teacher.output)
    outputs |= {BN_INPUT_PREFIX + layer.name: layer.input for layer in layers}
    model = keras.Model(teacher.input, outputs, name=f"{teacher.name}_bn_inputs")
    model.trainable = False
    return model, layers


class AdversarialGame:
    """One outer iteration of the zero-shot game, compiled (sections 2-3, and the
    generator priors of section 9 when their weights are set).

    Call iteration(z, iteration) -> {metric tag: scalar}, with z the global batch's
    noise and the 0-based outer iteration that sets both learning rates. Under a
    tf.distribute strategy the batch is split over the replicas and every value is
    the global batch's (zskt_tf.distribution); the networks and optimisers must have
    been built in the strategy's scope.
    """

    def __init__(
        self,
        teacher: keras.Model,
        student: keras.Model,
        generator: keras.Model,
        student_optimizer,
        generator_optimizer,
        config: GameConfig,
        strategy=None,
    ):
        self.config = config
        self.strategy = strategy or tf.distribute.get_strategy()
        self.teacher, self.bn_layers = (
            with_batchnorm_inputs(teacher) if config.bn_prior else (teacher, [])
        )
        self.student, self.generator = student, generator
        self.student_optimizer = student_optimizer
        self.generator_optimizer = generator_optimizer
        # With jit, XLA compiles each step, not the whole iteration: compiled whole,
        # with the tf.range student loop inside, an iteration ran 51 times slower on
        # XLA:CPU than in the graph (docs/RESULTS.md, "XLA and mixed precision").
        self._generator_step, self._student_step = (
            self.generator_step,
            self.student_step,
        )
        if config.jit:
            self._generator_step = tf.function(self.generator_step, jit_compile=True)
            self._student_step = tf.function(self.student_step, jit_compile=True)
        self.iteration = tf.function(self._iteration)

    def _discrepancy(self, teacher_logits, student_logits):
        """What the generator maximises and the student minimises (with attention)."""
        if self.config.adversarial_loss == "l1":
            return losses.logit_l1_distance(teacher_logits, student_logits)
        return losses.kl_divergence(
            teacher_logits, student_logits, self.config.temperature
        )

    def _priors(self, teacher_out) -> dict:
        """The generator priors' values on the global batch (section 9)."""
        config, terms = self.config, {}
        sum_over_replicas = distribution.all_reduce_sum
        if config.bn_prior:
            terms["train/bn_loss"] = losses.batch_norm_statistics_loss(
                [teacher_out[BN_INPUT_PREFIX + layer.name] for layer in self.bn_layers],
                [layer.moving_mean for layer in self.bn_layers],
                [layer.moving_variance for layer in self.bn_layers],
                sum_over_replicas,
            )
        if config.balance_prior:
            terms["train/balance_loss"] = losses.class_balance_loss(
                teacher_out["logits"], sum_over_replicas
            )
        return terms

    def _generator_terms(self, teacher_out, student_out, share) -> dict:
        """Each term as this replica's part of its global-batch value: means over
        examples weighted by the replica's share of the batch, global statistics by
        1 / replicas. Summed over replicas they are the global values."""
        teacher_logits, student_logits = teacher_out["logits"], student_out["logits"]
        discrepancy = self._discrepancy(teacher_logits, student_logits)
        terms = {
            "train/generator_loss": -discrepancy * tf.cast(share, discrepancy.dtype),
            # The disagreement the game is about, whatever the objective: near 0
            # means the game has collapsed.
            "train/generator_kl": losses.kl_divergence(
                teacher_logits, student_logits, self.config.temperature
            ),
            "train/teacher_max_prob": _mean_max_prob(teacher_logits),
            "train/student_max_prob": _mean_max_prob(student_logits),
        }
        for tag in (
            "train/generator_kl",
            "train/teacher_max_prob",
            "train/student_max_prob",
        ):
            terms[tag] *= tf.cast(share, terms[tag].dtype)
        fraction = distribution.replica_fraction()
        weights = {
            "train/bn_loss": self.config.bn_prior,
            "train/balance_loss": self.config.balance_prior,
        }
        for tag, value in self._priors(teacher_out).items():
            terms[tag] = value * fraction
            terms["train/generator_loss"] += weights[tag] * terms[tag]
        return terms

    def generator_step(self, z) -> dict:
        """One generator update on this replica's z (replica context)."""
        variables = self.generator.trainable_variables
        share = distribution.replica_share(tf.shape(z)[0])
        with tf.GradientTape() as tape:
            pseudo = self.generator(z, training=True)
            # The teacher is frozen and in inference mode but inside the tape, so the
            # gradient reaches the generator through it (the earlier port's .predict()
            # cut this path). The student is in training mode (authors' code).
            teacher_out = self.teacher(pseudo, training=False)
            student_out = self.student(pseudo, training=True)
            terms = self._generator_terms(teacher_out, student_out, share)
            scaled = self.generator_optimizer.scale_loss(terms["train/generator_loss"])
        grads = tape.gradient(scaled, variables)
        self.generator_optimizer.apply(grads, variables)
        return terms

    def targets(self, z):
        """The updated generator's images for the same z and the teacher's logits
        and taps on them (replica context). The authors re-run the generator for
        every student step; its output cannot change between those steps, so it is
        computed once, and so are the teacher's outputs (no gradient from either)."""
        pseudo = tf.stop_gradient(self.generator(z, training=True))
        teacher_out = self.teacher(pseudo, training=False)
        taps = [tf.stop_gradient(t) for t in _taps(teacher_out)]
        return pseudo, tf.stop_gradient(teacher_out["logits"]), taps

    def student_step(self, pseudo, teacher_logits, teacher_taps):
        """One student update (replica context); returns the global-batch parts of
        (loss, KL, attention)."""
        variables = self.student.trainable_variables
        share = distribution.replica_share(tf.shape(pseudo)[0])
        with tf.GradientTape() as tape:
            student_out = self.student(pseudo, training=True)
            logits = student_out["logits"]
            kl = losses.kl_divergence(teacher_logits, logits, self.config.temperature)
            discrepancy = kl
            if self.config.adversarial_loss != "kl":
                discrepancy = self._discrepancy(teacher_logits, logits)
            attention = (
                losses.total_attention_loss(_taps(student_out), teacher_taps)
                if self.config.beta
                else tf.zeros([], kl.dtype)
            )
            share = tf.cast(share, kl.dtype)
            loss = (discrepancy + self.config.beta * attention) * share
            scaled = self.student_optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        self.student_optimizer.apply(grads, variables)
        return loss, kl * share, attention * share

    def _set_learning_rates(self, iteration):
        # Both learning rates follow cosine annealing to 0 over the whole run, stepped
        # once per outer iteration (section 3), from the checkpointed clock.
        config = self.config
        for optimizer, base_lr in (
            (self.student_optimizer, config.student_lr),
            (self.generator_optimizer, config.generator_lr),
        ):
            lr = schedules.cosine(base_lr, iteration, config.resolved_schedule())
            optimizer.learning_rate.assign(tf.cast(lr, optimizer.learning_rate.dtype))

    def _iteration(self, z, iteration):
        strategy = self.strategy
        self._set_learning_rates(iteration)
        z = distribution.split_global_batch(strategy, z)
        for _ in range(self.config.generator_steps):  # n_g is 1 in the paper: unrolled
            values = strategy.run(self._generator_step, args=(z,))
        values = distribution.global_sum(values, strategy)
        # The student trains on the *updated* generator's images for the same z, as
        # the authors' loop does.
        pseudo, targets, taps = strategy.run(self.targets, args=(z,))
        loss = kl = attention = tf.zeros([], values["train/generator_kl"].dtype)
        # tf.range keeps this a loop in the graph rather than n_s unrolled copies.
        for _ in tf.range(self.config.student_steps):
            per_replica = strategy.run(self._student_step, args=(pseudo, targets, taps))
            loss, kl, attention = distribution.global_sum(per_replica, strategy)
        return values | {
            "train/student_loss": loss,
            "train/kl": kl,
            "train/attention": attention,
        }


def make_iteration_fn(
    teacher: keras.Model,
    student: keras.Model,
    generator: keras.Model,
    student_optimizer,
    generator_optimizer,
    config: GameConfig,
    strategy=None,
):
    """The compiled outer iteration: n_g generator steps, then n_s student steps.

    Args:
        teacher: the frozen teacher (trainable = False), called in inference mode.
        student, generator: the networks being trained.
        student_optimizer, generator_optimizer: built optimisers (see adam()).
        config: the method's settings (a GameConfig, e.g. a DistillConfig).
        strategy: the tf.distribute strategy the networks were built under; default:
            the current context's.

    Returns:
        A function (z, iteration) -> {metric tag: scalar}; iteration is the 0-based
        outer iteration that sets both learning rates.
    """
    game = AdversarialGame(
        teacher,
        student,
        generator,
        student_optimizer,
        generator_optimizer,
        config,
        strategy,
    )
    return game.iteration
