"""The zero-shot trainer on the shared run loop: networks, optimisers, noise, the
compiled game, evaluation and the run's pictures (ZSKT, arXiv 1905.09768,
Sec. 3 and Algorithm 1)."""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from zskt_tf import (
    adversarial,
    averaging,
    datasets,
    distribution,
    evaluation,
    model_io,
    networks,
    players,
    plots,
    replay,
    run_loop,
    schedules,
)
from zskt_tf.configs import DistillConfig
from zskt_tf.generator import generator as build_generator
from zskt_tf.training import mixed_precision_scope

# A window's mean KL(teacher || student) on the generator's batches below this is
# "near 0": the generator no longer finds disagreement and the adversarial game has
# collapsed. In the paper's method the generator loss is exactly -KL (ZSKT Sec. 3; a
# healthy run of the authors' sits at -0.10 to -0.12, collapsed runs here at -0.0001
# to -0.001); with other objectives the KL still measures the disagreement.
COLLAPSED_KL = 0.005
# Without a test set, agreement is measured on this many generator images, made in
# batches of at least AGREEMENT_BATCH (the generator normalises with batch statistics).
AGREEMENT_IMAGES = 1024
AGREEMENT_BATCH = 256
# With --student_ema and BatchNorm, the batches on which the averaged student's
# statistics are measured before it is evaluated or saved: with a replay pool, pool
# batches made as the pool steps make them (their seeds keyed by a negative key,
# REFRESH_KEY - 4 * seed, which no training draw uses: those keys are >= 0), else
# the generator's images from fixed noise.
BN_REFRESH_BATCHES = 16
REFRESH_KEY = -4
# With --student_ema, the history's key for the live student's figure beside the
# average's (test_accuracy_live, agreement_live).
LIVE = "_live"


def collapsed(entry: dict) -> bool:
    """Whether a history entry's window shows a collapsed game."""
    return entry.get("generator_kl", 1.0) < COLLAPSED_KL


@dataclasses.dataclass
class Inputs:
    """What a run needs, checked before anything is written (distill.check_inputs).

    Attributes:
        teacher: the frozen teacher.
        student: how to build each seed's student.
        data: the evaluation data, or None (data-free: agreement is reported).
        info: class names, the teacher's input shape and pixel convention.
        pairs: players.attention_pairs()'s answer.
    """

    teacher: players.Teacher
    student: players.Student
    data: datasets.ImageData | None
    info: datasets.DatasetInfo
    pairs: list | None

    @property
    def metric(self) -> str:
        return "test_accuracy" if self.data is not None else "agreement"


class EarlyCollapseCheck:
    """Tells a collapse-prone start at iteration 40, long before the first
    evaluation of a full run (iteration 800).

    In their first ~20 iterations the generator drives the teacher to near-certainty
    on one class on every seed and teacher tried; a game that is still near 0 over
    iterations 21-40 stays there (docs/RESULTS.md, "Why the game collapses").
    """

    WINDOW = (20, 40)  # iterations 21-40

    def __init__(self):
        self.values = []  # (KL on the generator's batch, teacher max prob)

    def update(self, iteration: int, values: dict) -> str | None:
        """Records the metrics of 1-based `iteration`; at the window's end, returns
        the warning if the window looks collapsed."""
        first, last = self.WINDOW
        if not first < iteration <= last:
            return None
        self.values.append(
            (
                float(values["train/generator_kl"]),
                float(values["train/teacher_max_prob"]),
            )
        )
        if iteration < last or len(self.values) < last - first:
            return None  # a run resumed inside the window skips the check
        kl, teacher_max_prob = np.mean(self.values, axis=0)
        if kl >= COLLAPSED_KL:
            return None
        return (
            f"early check, iterations {first + 1}-{last}: KL(teacher || student) "
            f"{kl:.4f} and teacher max prob {teacher_max_prob:.3f} on the pseudo "
            "images: the adversarial game has collapsed (the generator finds no "
            "images on which the student disagrees with this teacher). This "
            "teacher looks collapse-prone; the game may still recover, but if the "
            "evaluations stay near 0, rerun with --bn_prior=1 or "
            "--adversarial_loss=l1 (README, 'Beyond the paper'), or use a teacher "
            "trained longer or with --label_smoothing=0.1."
        )


class ZeroShotTrainer(run_loop.Trainer):
    """A zero-shot run on the run loop: the student and generator, their optimisers,
    the checkpointed noise (and replay pool), the compiled iteration, evaluation and
    the run's pictures."""

    loss_tags = ("train/generator_loss", "train/student_loss")

    def __init__(self, config: DistillConfig, inputs: Inputs, strategy=None):
        self.config, self.inputs = config, inputs
        self.teacher, self.info = inputs.teacher, inputs.info
        self.metric = inputs.metric
        self.strategy = strategy or tf.distribute.get_strategy()
        self.chief = distribution.is_chief(self.strategy)
        self.output_dir = pathlib.Path(config.output_dir)
        self._build_networks()
        # Noise for the global batch, on the host: the same z whatever the replicas.
        self.noise = tf.random.Generator.from_seed(config.seed)
        self.sample_z = tf.random.Generator.from_seed(10_000 + config.seed).normal(
            [64, config.z_dim], dtype=self.z_dtype
        )
        self.pairs = inputs.pairs
        if self.pairs:  # by layer name: this student's names (see attention_pairs)
            self.pairs = players.attention_pairs(
                self.teacher, self.student, config.attention_pairs, config.beta
            )
        teacher_net, self.student_net, pairs = players.game_networks(
            self.teacher, self.student, self.pairs
        )
        # The network the run keeps (evaluates, saves, returns): the live student,
        # or with --student_ema the average of its weights.
        self.kept_net = self.student_net
        if self.average:
            model = self.average.holder
            self.kept_net = (
                model
                if self.inputs.student.wrn
                else networks.TappedNetwork(model, what="the averaged student")
            )
            logging.info(
                "--student_ema=%g: the run's student is the exponential moving "
                "average of the trained weights (updated once per iteration); "
                "evaluations also report the live student's %s",
                config.student_ema,
                self.metric,
            )
        scale = self.teacher.scale
        if not scale.identity:
            logging.info(
                "the generator's images are read as pixels of mean %s, std %s "
                "(--image_stats) and mapped into the teacher's inputs (%s)",
                _numbers(scale.image_mean),
                _numbers(scale.image_std),
                scale.spec,
            )
        game_args = (
            teacher_net,
            self.student_net,
            self.generator,
            self.student_optimizer,
            self.generator_optimizer,
            config,
            self.strategy,
            pairs,
            None if scale.identity else scale.generator_map(),
            scale.pixel_bounds() if config.clip_images else None,
        )
        self.pool = None
        if config.replay_size:
            self.pool = replay.ReplayPool(
                config.replay_size, self.info.image_shape, self.strategy
            )
            self.pool.log_memory()
            self.game = replay.ReplayGame(*game_args, pool=self.pool, seed=config.seed)
        else:
            self.game = adversarial.AdversarialGame(*game_args)
        self.iteration_fn = self.game.iteration
        # Where the average's BatchNorm statistics are measured (--student_ema).
        self.refresh_from = "pool" if self.pool else "generator"
        if self.average and self.average.refreshed is not None:
            logging.info(
                "--student_ema: the average's BatchNorm statistics are measured "
                "anew on %d batches of %s before each evaluation and save",
                BN_REFRESH_BATCHES,
                {"pool": "the replay pool", "generator": "the generator's images"}[
                    self.refresh_from
                ],
            )
        self._set_up_evaluation(teacher_net)
        self.early_check = EarlyCollapseCheck()

    @property
    def kept_student(self) -> keras.Model:
        """The student the run keeps: the live one, or its average (--student_ema;
        with BatchNorm, its statistics measured for the averaged weights)."""
        if not self.average:
            return self.student
        return self.average.kept(self._run_refresh_batches)

    def _run_refresh_batches(self, model) -> int:
        """Runs model in training mode on BN_REFRESH_BATCHES global batches, split
        over the replicas as in training, so that its BatchNorm layers measure their
        statistics (collective). With a replay pool (refresh_from "pool") the
        batches are the pool's, drawn, cropped, flipped and mixed as the pool steps
        do (the student trains mostly on those); else (refresh_from "generator")
        the generator's images for fixed noise."""
        # An empty pool (nothing trained yet) has nothing to draw.
        from_pool = self.refresh_from == "pool" and int(self.pool.count) > 0
        if (id(model), from_pool) not in self._refresh_steps:
            self._refresh_steps[id(model), from_pool] = tf.function(
                functools.partial(self._refresh_forward, model, from_pool)
            )
        step = self._refresh_steps[id(model), from_pool]
        batch = self.config.batch_size
        if from_pool:
            key = tf.constant(REFRESH_KEY - 4 * self.config.seed, tf.int64)
            dtype = tf.as_dtype(self.generator.outputs[0].dtype)
            for index in range(BN_REFRESH_BATCHES):
                images = self.game.pool_batch(
                    batch, dtype, key, tf.constant(index, tf.int64)
                )
                distribution.run_on_global_batch(self.strategy, step, images)
            return BN_REFRESH_BATCHES
        if self._refresh_z is None:
            self._refresh_z = tf.random.Generator.from_seed(
                30_000 + self.config.seed
            ).normal(
                [BN_REFRESH_BATCHES * batch, self.config.z_dim], dtype=self.z_dtype
            )
        for start in range(0, BN_REFRESH_BATCHES * batch, batch):
            z = self.game.generator_input(self._refresh_z[start : start + batch])
            distribution.run_on_global_batch(self.strategy, step, z)
        return BN_REFRESH_BATCHES

    def _refresh_forward(self, model, from_pool, inputs):
        images = inputs if from_pool else self.game.images(inputs)
        model(images, training=True)  # BatchNorm updates its statistics
        return tf.zeros([tf.shape(inputs)[0]])

    @property
    def z_dtype(self):
        return self.generator.inputs[0].dtype

    def _build_networks(self) -> None:
        """The student, the generator and their optimisers, in the strategy's scope;
        BatchNorm synchronized over replicas when there are several."""
        config = self.config
        # The seed alone fixes the initial student and generator (the teacher is
        # loaded already, so it draws nothing from the seeded generators).
        keras.utils.set_random_seed(config.seed)
        synchronized = distribution.replicas(self.strategy) > 1
        with self.strategy.scope(), mixed_precision_scope(config.mixed_precision):
            self.student = self.inputs.student.build(
                self.info.image_shape, self.info.num_classes, synchronized
            )
            players.check_student(self.student, self.teacher)
            # A class-conditional generator also takes a one-hot class.
            inputs = config.z_dim + self.info.num_classes * bool(config.class_prior)
            self.generator = build_generator(
                inputs, self.info.image_shape, synchronized=synchronized
            )
            self.student_optimizer = adversarial.student_optimizer(config)
            self.generator_optimizer = adversarial.adam(
                config.generator_lr, config.grad_clip, config.mixed_precision
            )
            self.student_optimizer.build(self.student.trainable_variables)
            self.generator_optimizer.build(self.generator.trainable_variables)
            # Built last, so the student and generator draw what they always have.
            self.average, self._refresh_z, self._refresh_steps = None, None, {}
            if config.student_ema:
                copy, refreshed = (
                    self.inputs.student.build(
                        self.info.image_shape, self.info.num_classes, synchronized
                    )
                    for _ in range(2)
                )
                self.average = averaging.WeightAverage(
                    self.student, copy, config.student_ema, self.strategy, refreshed
                )

    def _set_up_evaluation(self, teacher_net) -> None:
        """Test accuracy on the evaluation data, or, without it, how often student
        and teacher agree on generator images they were not trained on."""
        data = self.inputs.data
        if data is None:
            logging.info(
                "no test set: each evaluation reports how often student and teacher "
                "predict the same class on %d fresh generator images",
                AGREEMENT_IMAGES,
            )
            self.agreement_z = tf.random.Generator.from_seed(
                20_000 + self.config.seed
            ).normal([AGREEMENT_IMAGES, self.config.z_dim], dtype=self.z_dtype)
            distinct = {id(n): n for n in (self.student_net, self.kept_net)}
            self._measures = {
                key: tf.function(functools.partial(self._agreement_step, network))
                for key, network in distinct.items()
            }
            self.teacher_accuracy = None
            return
        self._measures = {}
        for network in (self.student_net, self.kept_net, teacher_net):
            if id(network) not in self._measures:
                self._measures[id(network)] = evaluation.Accuracy(
                    network,
                    data.test_images,
                    data.test_labels,
                    self.info,
                    strategy=self.strategy,
                )
        self.teacher_accuracy = self._measures[id(teacher_net)]()
        logging.info(
            "teacher %s: test accuracy %.4f here, %s recorded",
            self.teacher.description,
            self.teacher_accuracy,
            self.teacher.record.get("recorded_accuracy"),
        )

    def _agreement_step(self, network, z):
        images = self.game.images(z)
        teacher = self.game.teacher(images, training=False)["logits"]
        student = network(images, training=False)["logits"]
        return tf.reduce_sum(
            tf.cast(tf.argmax(teacher, -1) == tf.argmax(student, -1), tf.int64)
        )

    def agreement(self, network=None) -> float:
        """Share of fresh generator images (made in batches of the training batch
        size or AGREEMENT_BATCH, whichever is larger) on which the student (network:
        default the kept one) and the teacher predict the same class."""
        step = self._measures[id(network or self.kept_net)]
        batch, strategy = max(self.config.batch_size, AGREEMENT_BATCH), self.strategy
        agreed = 0
        for start in range(0, AGREEMENT_IMAGES - batch + 1, batch):
            z = self.game.generator_input(self.agreement_z[start : start + batch])
            z = distribution.split_global_batch(strategy, z)
            per_replica = strategy.run(step, args=(z,))
            agreed += int(distribution.global_sum(per_replica, strategy))
        return agreed / (AGREEMENT_IMAGES // batch * batch)

    def checkpointables(self) -> dict:
        return dict(
            student=self.student,
            generator=self.generator,
            student_optimizer=self.student_optimizer,
            generator_optimizer=self.generator_optimizer,
            noise=self.noise,
            **(self.pool.checkpointables() if self.pool else {}),
            **(dict(student_average=self.average.model) if self.average else {}),
        )

    def batches(self, step: int, end: int):
        # Drawn lazily, so the checkpointed noise state matches the steps taken.
        for _ in range(end - step):
            yield self.noise.normal(
                [self.config.batch_size, self.config.z_dim], dtype=self.z_dtype
            )

    def train_step(self, batch, step: int) -> dict:
        values = self.iteration_fn(batch, tf.constant(step, tf.int64))
        if self.average:
            self.average.update()
        warning = self.early_check.update(step + 1, values)
        if warning:
            logging.warning(warning)
        return values

    def evaluate(self, step: int) -> dict:
        del step
        if self.average:  # its BatchNorm statistics measured anew if it moved
            self.average.kept(self._run_refresh_batches)
        values = {self.metric: self._measure(self.kept_net)}
        if self.average:
            values[self.metric + LIVE] = self._measure(self.student_net)
        return values

    def _measure(self, network) -> float:
        if self.inputs.data is None:
            return self.agreement(network)
        return self._measures[id(network)]()

    def log_scalars(self, step: int) -> dict:
        schedule = self.config.resolved_schedule()
        return {
            "train/student_lr": schedules.cosine(
                self.config.student_lr, step - 1, schedule
            ),
            "train/generator_lr": schedules.cosine(
                self.config.generator_lr, step - 1, schedule
            ),
        }

    def on_evaluation(self, entry: dict, history: list[dict]) -> None:
        what = self.metric.replace("_", " ")
        if "generator_loss" not in entry:  # the untrained student
            logging.info("student before training: %s %.4f", what, entry[self.metric])
            return
        figure = f"{entry[self.metric]:.4f}"
        if self.average:
            figure += f" (average; live student {entry[self.metric + LIVE]:.4f})"
        step = entry["iteration"]
        tf.summary.image(
            "pseudo_images", self.pseudo_samples()[:16], step=step, max_outputs=16
        )
        logging.info(
            "iteration %d: %s %s | generator loss %.4f, KL %.4f | max prob teacher "
            "%.3f student %.3f",
            step,
            what,
            figure,
            entry["generator_loss"],
            entry["generator_kl"],
            entry["teacher_max_prob"],
            entry["student_max_prob"],
        )
        if collapsed(entry):
            logging.warning(
                "KL(teacher || student) %.4f on the generator's batches is near 0: "
                "the adversarial game has collapsed (teacher max prob %.3f); it may "
                "recover, else see the early check's advice",
                entry["generator_kl"],
                entry["teacher_max_prob"],
            )

    def pseudo_samples(self):
        """The generator's images for the fixed sample noise, as in training (batch
        statistics, split over the replicas like a training batch), as pixels."""
        images = distribution.run_on_global_batch(
            self.strategy,
            lambda z: self.generator(z, training=True),
            self.game.generator_input(self.sample_z),
        )
        scale = self.teacher.scale
        return plots.to_display(np.asarray(images), scale.image_mean, scale.image_std)

    def write_outputs(self, history: list[dict]) -> None:
        """The student and generator as they are now, and the PNGs: at the end, and
        at every stop, so that a run worked in chunks can be used between them."""
        samples = self.pseudo_samples()  # collective: every process takes part
        kept = self.kept_student  # collective too (--student_ema's refresh)
        if not self.chief:
            return
        model_io.save_network(
            kept if self.inputs.student.wrn else self.kept_net,
            self.output_dir,
            model_io.STUDENT_WEIGHTS,
        )
        model_io.save_weights(
            self.generator, self.output_dir / model_io.GENERATOR_WEIGHTS
        )
        plots.save_image_grid(samples, self.output_dir / "samples.png")
        plots.save_curves(
            history,
            self.output_dir / "accuracy.png",
            f"zero-shot {self.inputs.student.source} from {self.teacher.description}",
            self.teacher_accuracy,
            metric=self.metric,
        )

    def on_stop(self, history: list[dict]) -> None:
        self.write_outputs(history)

    def finish(self, history: list[dict], timing: dict) -> dict:
        del timing
        self.write_outputs(history)
        logging.info(
            "done: student %s %.4f (teacher %s); outputs in %s",
            self.metric.replace("_", " "),
            history[-1][self.metric],
            "-" if self.teacher_accuracy is None else f"{self.teacher_accuracy:.4f}",
            self.output_dir,
        )
        results = {
            "teacher_test_accuracy": self.teacher_accuracy,
            "teacher_recorded_accuracy": self.teacher.record.get("recorded_accuracy"),
        }
        if self.pairs:
            results["attention_layers"] = [str(pair) for pair in self.pairs]
        return results


def _numbers(values) -> str:
    """Per-channel values, once when they are all the same."""
    text = [f"{value:g}" for value in values]
    return text[0] if len(set(text)) == 1 else ",".join(text)
