"""The zero-shot outer iteration (ZSKT, arXiv 1905.09768, Sec. 3 and Algorithm 1):
one compiled function that
takes n_g generator steps and then n_s student steps on the same pseudo batch."""

from __future__ import annotations

import keras
import tensorflow as tf

from zskt_tf import distribution, losses, networks, schedules
from zskt_tf.configs import (  # noqa: F401 (ADVERSARIAL_LOSSES, METRICS re-exported)
    ADVERSARIAL_LOSSES,
    METRICS,
    GameConfig,
)
from zskt_tf.optimizers import TorchAdam, TorchSGD
from zskt_tf.wide_resnet import TAPS

# PyTorch's Adam epsilon (Keras defaults to 1e-7); the authors use torch defaults.
ADAM_EPSILON = 1e-8


def student_optimizer(config):
    """The student's optimiser: the authors' Adam (adam()), or PyTorch-style SGD
    with momentum 0.9 as the replay methods use (CMI, arXiv 2105.08584; Fast); both clip
    the global-batch gradient to norm grad_clip."""
    if config.student_optimizer == "sgd":
        optimizer = TorchSGD(
            learning_rate=config.student_lr,
            momentum=0.9,
            torch_weight_decay=config.student_weight_decay,
            global_clipnorm=config.grad_clip,
        )
        if config.mixed_precision:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        return optimizer
    return adam(config.student_lr, config.grad_clip, config.mixed_precision)


def adam(learning_rate: float, grad_clip: float, mixed_precision: bool):
    """The authors' optimiser: PyTorch's Adam, gradients clipped to norm grad_clip.

    global_clipnorm clips after loss-scale unscaling, so the same code is right in
    float32 and mixed precision (clip by global norm 5, the authors' code).
    """
    optimizer = TorchAdam(
        learning_rate=learning_rate, epsilon=ADAM_EPSILON, global_clipnorm=grad_clip
    )
    if mixed_precision:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _mean_max_prob(logits):
    probabilities = tf.nn.softmax(losses.at_least_float32(logits))
    return tf.reduce_mean(tf.reduce_max(probabilities, -1))


BN_INPUT_PREFIX = networks.BN_INPUT_PREFIX
# The paper's attention pairs: the three groups' outputs of two Wide ResNets.
WRN_PAIRS = tuple((tap, tap) for tap in TAPS)


def with_batchnorm_inputs(teacher) -> tuple[networks.TappedNetwork, list]:
    """The teacher that also returns the input of each of its BatchNorm layers,
    nested ones included, as "bn_input:<layer path>" beside its other outputs,
    from the same forward pass (zskt_tf.networks).

    Args:
        teacher: a keras.Model or a TappedNetwork (whose taps are kept).

    Returns:
        (the network, its BatchNormalization layers in the model's layer order).
    """
    if isinstance(teacher, networks.TappedNetwork):
        if teacher.batch_norm_inputs:
            return teacher, teacher.bn_layers
        teacher = networks.TappedNetwork(teacher.model, teacher.taps, True)
    else:
        teacher = networks.TappedNetwork(teacher, batch_norm_inputs=True)
    return teacher, teacher.bn_layers


class AdversarialGame:
    """One outer iteration of the zero-shot game, compiled (ZSKT Algorithm 1, and the
    generator priors of DeepInversion, DAFL, DFQ and Fast when their weights are set).

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
        pairs=WRN_PAIRS,
        input_map=None,
        input_bounds=None,
    ):
        """Args: the frozen teacher and the student (keras.Models with dict
        outputs, or zskt_tf.networks.TappedNetworks), the generator, the optimisers
        (built), the settings, the strategy they were built under, the attention
        pairs as (teacher output key, student output key), and input_map, the
        per-channel (scale, shift) from the generator's standardised images to the
        teacher's input space (zskt_tf.pixels; None: the same space, the paper's
        case), and input_bounds, the per-channel (low, high) its images are clipped
        to in that space (None: unbounded, the paper's case)."""
        self.config = config
        self.strategy = strategy or tf.distribute.get_strategy()
        self.teacher, self.bn_layers = (
            with_batchnorm_inputs(teacher) if config.bn_prior else (teacher, [])
        )
        self.teacher_keys = [t for t, _ in pairs]
        self.student_keys = [s for _, s in pairs]
        self.input_map = input_map
        self.input_bounds = input_bounds
        self.num_classes = networks.class_count(teacher)
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
        """The generator priors' values on the global batch (papers: losses.py)."""
        config, terms = self.config, {}
        sum_over_replicas = distribution.all_reduce_sum
        if config.bn_prior:
            terms["train/bn_loss"] = losses.batch_norm_statistics_loss(
                [teacher_out[key] for key in self.teacher.bn_keys],
                [layer.moving_mean for layer in self.bn_layers],
                [layer.moving_variance for layer in self.bn_layers],
                sum_over_replicas,
            )
        if config.balance_prior:
            terms["train/balance_loss"] = losses.class_balance_loss(
                teacher_out["logits"], sum_over_replicas
            )
        return terms

    def _adversarial_term(self, teacher_logits, student_logits):
        """The disagreement the generator maximises, a mean over the batch: the
        paper's, or (adversarial_mask) only over images on which both networks
        predict the same class (CMI, Fast)."""
        if not self.config.adversarial_mask:
            return self._discrepancy(teacher_logits, student_logits)
        if self.config.adversarial_loss == "l1":
            per_example = losses.logit_l1_distance(
                teacher_logits, student_logits, per_example=True
            )
        else:
            per_example = losses.kl_divergence(
                teacher_logits, student_logits, self.config.temperature, True
            )
        agree = tf.argmax(teacher_logits, -1) == tf.argmax(student_logits, -1)
        return tf.reduce_mean(per_example * tf.cast(agree, per_example.dtype))

    def _generator_terms(self, images, teacher_out, student_out, share, labels) -> dict:
        """Each term as this replica's part of its global-batch value: means over
        examples weighted by the replica's share of the batch, global statistics by
        1 / replicas. Summed over replicas they are the global values."""
        teacher_logits, student_logits = teacher_out["logits"], student_out["logits"]
        discrepancy = self._adversarial_term(teacher_logits, student_logits)
        if self.config.adversarial_weight != 1.0:
            discrepancy *= self.config.adversarial_weight
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
        if self.config.tv_prior:
            variation = losses.total_variation(images)
            terms["train/tv_loss"] = variation * tf.cast(share, variation.dtype)
            terms["train/generator_loss"] += (
                self.config.tv_prior * terms["train/tv_loss"]
            )
        if self.config.class_prior:
            # The teacher should see in each image the class it was asked for.
            cross_entropy = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=labels, logits=losses.at_least_float32(teacher_logits)
                )
            )
            terms["train/class_loss"] = cross_entropy * tf.cast(
                share, cross_entropy.dtype
            )
            terms["train/generator_loss"] += (
                self.config.class_prior * terms["train/class_loss"]
            )
        return terms

    def generator_input(self, z):
        """What the generator is fed for the global batch's noise z: z itself, or
        with class_prior z beside a one-hot class, every class equally often
        (class k at rows k, k + K, ...)."""
        if not self.config.class_prior:
            return z
        labels = tf.range(tf.shape(z)[0]) % self.num_classes
        return tf.concat([z, tf.one_hot(labels, self.num_classes, dtype=z.dtype)], -1)

    def _requested_classes(self, z):
        """The classes a class-conditional generator input asks for (else None)."""
        if not self.config.class_prior:
            return None
        return tf.argmax(z[:, -self.num_classes :], -1, output_type=tf.int32)

    def images(self, z):
        """The generator's images for z (training mode: batch statistics, as the
        authors always run it), in the teacher's input space."""
        images = self.generator(z, training=True)
        if self.input_map is not None:
            scale, shift = (tf.constant(v, images.dtype) for v in self.input_map)
            images = images * scale + shift
        if self.input_bounds is not None:
            low, high = (tf.constant(v, images.dtype) for v in self.input_bounds)
            images = tf.clip_by_value(images, low, high)
        return images

    def generator_step(self, z) -> dict:
        """One generator update on this replica's z (replica context)."""
        variables = self.generator.trainable_variables
        share = distribution.replica_share(tf.shape(z)[0])
        with tf.GradientTape() as tape:
            pseudo = self.images(z)
            # The teacher is frozen and in inference mode but inside the tape, so the
            # gradient reaches the generator through it (the earlier port's .predict()
            # cut this path). The student is in training mode (authors' code).
            teacher_out = self.teacher(pseudo, training=False)
            student_out = self.student(pseudo, training=True)
            terms = self._generator_terms(
                pseudo, teacher_out, student_out, share, self._requested_classes(z)
            )
            scaled = self.generator_optimizer.scale_loss(terms["train/generator_loss"])
        grads = tape.gradient(scaled, variables)
        self.generator_optimizer.apply(grads, variables)
        return terms

    def targets(self, z):
        """The updated generator's images for the same z and the teacher's logits
        and taps on them (replica context). The authors re-run the generator for
        every student step; its output cannot change between those steps, so it is
        computed once, and so are the teacher's outputs (no gradient from either)."""
        pseudo = tf.stop_gradient(self.images(z))
        return (pseudo, *self.teacher_targets(pseudo))

    def teacher_targets(self, images):
        """The teacher's logits and attention taps on images, without gradient
        (replica context)."""
        teacher_out = self.teacher(images, training=False)
        taps = [tf.stop_gradient(teacher_out[key]) for key in self.teacher_keys]
        return tf.stop_gradient(teacher_out["logits"]), taps

    def student_step(self, pseudo, teacher_logits, teacher_taps, temperature=None):
        """One student update (replica context); returns the global-batch parts of
        (loss, KL, attention). temperature: None for the game's KL (the paper's),
        or T for T^2 x KL at temperature T (the replay steps' option)."""
        variables = self.student.trainable_variables
        share = distribution.replica_share(tf.shape(pseudo)[0])
        with tf.GradientTape() as tape:
            student_out = self.student(pseudo, training=True)
            logits = student_out["logits"]
            if temperature is None:
                kl = losses.kl_divergence(
                    teacher_logits, logits, self.config.temperature
                )
                discrepancy = kl
            else:
                kl = losses.kl_divergence(teacher_logits, logits, temperature)
                discrepancy = kl * temperature**2
            if self.config.adversarial_loss != "kl":
                discrepancy = self._discrepancy(teacher_logits, logits)
            attention = (
                losses.total_attention_loss(
                    [student_out[key] for key in self.student_keys], teacher_taps
                )
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
        # once per outer iteration (ZSKT Sec. 4), from the checkpointed clock.
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
        batch_size = z.shape[0]  # the global batch, static
        z = distribution.split_global_batch(strategy, self.generator_input(z))
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
        return (
            values
            | {"train/student_loss": loss, "train/kl": kl, "train/attention": attention}
            | self._after_student_steps(iteration, pseudo, batch_size, loss.dtype)
        )

    def _after_student_steps(self, iteration, pseudo, batch_size, dtype) -> dict:
        """More student training after the paper's steps (zskt_tf.replay); none in
        the paper's game. Returns extra metrics."""
        del iteration, pseudo, batch_size, dtype
        return {}


def make_iteration_fn(*args, **kwargs):
    """The compiled outer iteration, AdversarialGame(*args, **kwargs).iteration:
    n_g generator steps, then n_s student steps on the same pseudo batch.

    Takes AdversarialGame's arguments: the frozen teacher (called in inference
    mode), the student and the generator, their built optimisers (see adam()), the
    settings (a GameConfig, e.g. a DistillConfig), the strategy, the attention pairs
    and the map into the teacher's input space.

    Returns:
        A function (z, iteration) -> {metric tag: scalar}; iteration is the 0-based
        outer iteration that sets both learning rates.
    """
    return AdversarialGame(*args, **kwargs).iteration
