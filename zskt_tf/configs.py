"""Every run's settings as frozen dataclasses: one place per option.

Each field is declared once, with its default, its help text and (where users type a
shorter name, e.g. --n_s) its flag name; the programs in bin/ derive their flags from
these fields (zskt_tf.cli.define_config_flags). Validation raises one-line UserErrors.
This module imports neither TensorFlow nor Keras, so `--help` stays instant.
"""

from __future__ import annotations

import dataclasses

from zskt_tf import schedules
from zskt_tf.errors import UserError

LR_SCHEDULES = ("step", "cosine", "onecycle")
ADVERSARIAL_LOSSES = ("kl", "l1")
STUDENT_OPTIMIZERS = ("adam", "sgd")
REPLAY_MIXES = ("none", "mixup", "cutmix")
# Every run logs these; the priors and the replay pool add their own
# (GameConfig.metric_tags).
METRICS = (
    "train/generator_loss",
    "train/generator_kl",
    "train/student_loss",
    "train/kl",
    "train/attention",
    "train/teacher_max_prob",
    "train/student_max_prob",
)


def option(default, help: str, flag: str | None = None, choices=None):  # noqa: A002
    """A config field with what its command-line flag needs: the help text, the
    flag's name when it differs from the field's, and the allowed values."""
    metadata = {"help": help, "flag": flag, "choices": choices}
    return dataclasses.field(default=default, metadata=metadata)


def required(help: str):  # noqa: A002
    """A config field without a default (a required flag)."""
    return dataclasses.field(metadata={"help": help, "flag": None, "choices": None})


def positive(name: str, value) -> None:
    """Raises a one-line UserError unless value > 0."""
    if value is None or value <= 0:
        raise UserError(f"{name} must be positive, got {value}")


def check_seed(seed, name: str = "seed") -> None:
    """Raises a one-line UserError unless seed is an integer in [0, 2**32), the
    range keras.utils.set_random_seed (NumPy's global seeding) takes."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise UserError(f"{name} must be an integer in [0, 2**32), got {seed!r}")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def check_architecture(depth: int, width: int) -> int:
    """Validates a WRN-depth-width and returns the number of blocks per group.

    Raises:
        UserError: depth is not 6n+4 with n >= 1, or width is not positive.
    """
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise UserError(
            f"invalid Wide ResNet depth {depth}: depth must be 6n+4 "
            "(10, 16, 22, 28, 40, ...)"
        )
    if not isinstance(width, int) or width < 1:
        raise UserError(
            f"invalid Wide ResNet width {width}: must be a positive integer"
        )
    return (depth - 4) // 6


# ---------------------------------------------------- SGD (the authors' teacher recipe)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SGDRecipe:
    """SGD momentum 0.9, weight decay 5e-4 (PyTorch L2), lr 0.1, batch 128, lr x0.2
    at 30/60/80% of the run (the authors' code). "cosine" (lr to 0) and "onecycle"
    (linear warm-up to lr over 20% of the run, then linear to 0) are options for short
    runs."""

    batch_size: int = option(128, "Batch size.")
    lr: float = option(0.1, "Initial learning rate (onecycle: the peak).")
    momentum: float = option(0.9, "SGD momentum.")
    weight_decay: float = option(5e-4, "L2 added to the gradient (PyTorch SGD).")
    lr_schedule: str = option(
        "step",
        "step (the paper's decays at milestones), cosine, or onecycle (linear "
        "warm-up over 20% of the run, then linear decay to 0): for short runs.",
        choices=LR_SCHEDULES,
    )
    lr_decay: float = option(0.2, "Step schedule: lr factor at each milestone.")
    lr_milestones: tuple[float, ...] = option(
        (0.3, 0.6, 0.8), "Step schedule: fractions of the run."
    )

    def validate(self) -> None:
        positive("batch_size", self.batch_size)
        positive("lr", self.lr)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)

    def learning_rate(self, step: int, total_steps: int) -> float:
        if self.lr_schedule == "cosine":
            return schedules.cosine(self.lr, step, total_steps)
        if self.lr_schedule == "onecycle":
            return schedules.one_cycle(self.lr, step, total_steps)
        return schedules.step_decay(
            self.lr, step, total_steps, self.lr_decay, self.lr_milestones
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Where a run writes and how it is controlled; none changes its result."""

    output_dir: str = required("Run directory; rerun the same command to resume.")
    data_dir: str | None = option(
        None, "Local dataset files; default: tensorflow-datasets."
    )
    cache_dir: str | None = option(
        None, "Cache of decoded local files (~/.cache/zskt_tf)."
    )
    mixed_precision: bool = option(False, "mixed_float16 (GPU).")
    stop_at: int | None = option(
        None,
        "Stop at this step (iteration) with a checkpoint; rerun without it to "
        "continue (Colab chunks).",
    )
    restart: bool = option(
        False,
        "When checkpoints exist but none reads back whole (they are moved to "
        "checkpoints/damaged/), start the run again from the beginning.",
    )

    def validate(self) -> None:
        # Every run's config has a seed (TeacherConfig, FewShotConfig, DistillConfig).
        check_seed(self.seed)
        super().validate()


@dataclasses.dataclass(frozen=True, kw_only=True)
class TeacherConfig(RunOptions, SGDRecipe):
    """Everything that defines a teacher run. Defaults are the authors' code's.

    epochs=None means 200 for CIFAR and 100 for SVHN (and other sets).
    """

    dataset: str = option(
        "cifar10",
        "Dataset name (cifar10, cifar100, svhn, fashion_mnist, mnist, folder).",
    )
    depth: int = option(40, "WRN depth (6n+4).")
    width: int = option(2, "WRN widening factor.")
    epochs: int | None = option(None, "Epochs; default 200 for CIFAR, 100 otherwise.")
    label_smoothing: float = option(
        0.0, "Not in the paper (0): train on (1 - s) one-hot + s / classes targets."
    )
    seed: int = option(0, "Random seed (init, data order, augmentation).")
    jit: bool = option(False, "XLA-compile the training step.")
    log_every: int = option(50, "Steps between TensorBoard scalars.")

    def resolved_epochs(self) -> int:
        if self.epochs is not None:
            return self.epochs
        return 200 if self.dataset.startswith("cifar") else 100

    def validate(self) -> None:
        from zskt_tf import datasets

        check_architecture(self.depth, self.width)
        positive("epochs", self.resolved_epochs())
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(
                f"label_smoothing must be in [0, 1), got {self.label_smoothing}"
            )
        super().validate()
        if self.dataset != datasets.FOLDER:
            datasets.get_info(self.dataset)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FewShotConfig(RunOptions, SGDRecipe):
    """A student trained on M images per class with the teacher's SGD recipe.

    m_per_class=-1 uses all the data. The number of steps equals that of a
    reference_epochs run on the full training split (ZSKT Sec. 4.1), so epochs over the
    subset are scaled up and the lr milestones with them.
    """

    m_per_class: int = option(200, "Training images per class; -1 = all.")
    dataset: str = option("cifar10", "Dataset name.")
    teacher: str | None = option(
        None, "Teacher run directory: KD+AT. Omit for the 'no teacher' baseline."
    )
    init_student: str | None = option(
        None,
        "Start from this student: a zero-shot run directory, or a .keras file (or "
        "a run directory holding student.keras).",
    )
    student_depth: int = option(16, "Student WRN depth.")
    student_width: int = option(1, "Student WRN width.")
    reference_epochs: int = option(
        200, "Steps equal a full-data run of this many epochs."
    )
    alpha: float = option(0.9, "KD+AT: weight of the KL term.")
    temperature: float = option(4.0, "KD+AT: softmax temperature.")
    beta: float = option(1000.0, "KD+AT: attention weight.")
    seed: int = option(0, "Seed (subset, init, order).")
    eval_every: int | None = option(
        None, "Steps between evaluations (default 1% of the run)."
    )
    jit: bool = option(False, "XLA-compile the training step.")
    log_every: int = option(50, "Steps between TensorBoard scalars.")

    def validate(self) -> None:
        check_architecture(self.student_depth, self.student_width)
        positive("reference_epochs", self.reference_epochs)
        super().validate()
        if self.m_per_class != -1:
            positive("m_per_class", self.m_per_class)
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"alpha must be in [0, 1], got {self.alpha}")


# ------------------------------------------------------ the zero-shot game (2-3)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GameConfig:
    """The method's hyper-parameters; every default is the paper's (ZSKT Sec. 3-4)."""

    generator_steps: int = option(1, "Generator steps per iteration.", flag="n_g")
    student_steps: int = option(
        10, "Student steps per iteration, on the same pseudo batch.", flag="n_s"
    )
    total_iterations: int = option(80_000, "Outer iterations (50000 for SVHN).")
    # Length of the cosine schedules; None means total_iterations. A shorter run of
    # a longer schedule follows the paper's learning rates for its first iterations.
    schedule_iterations: int | None = option(
        None,
        "Length of the cosine schedules (default: --total_iterations); a shorter "
        "run then follows the paper's first iterations.",
    )
    student_lr: float = option(2e-3, "Student Adam lr, cosine-annealed to 0.")
    generator_lr: float = option(1e-3, "Generator Adam lr, cosine-annealed to 0.")
    beta: float = option(250.0, "Attention-transfer weight (0 disables).")
    temperature: float = option(1.0, "Softmax temperature of the KL.")
    grad_clip: float = option(5.0, "Global-norm gradient clipping.")
    jit: bool = option(False, "XLA-compile each step (GPU, TPU).")
    # Beyond the paper (generator objectives of later methods, named on each option);
    # the defaults are the paper's method.
    adversarial_loss: str = option(
        "kl",
        "Beyond the paper. What the generator maximises and the student minimises: "
        "kl (the paper's) or l1 (mean absolute logit difference, DFAD).",
        choices=ADVERSARIAL_LOSSES,
    )
    bn_prior: float = option(
        0.0,
        "Beyond the paper. Weight of the teacher's BatchNorm-statistics prior on "
        "the generator (DFQ, DeepInversion); 0 = off, the paper's method.",
    )
    balance_prior: float = option(
        0.0,
        "Beyond the paper. Weight of the class-balance prior on the generator "
        "(negative entropy of the batch-mean teacher prediction, DAFL/DFQ); 0 = off.",
    )
    tv_prior: float = option(
        0.0,
        "Beyond the paper. Weight of a total-variation prior on the generator's "
        "images (mean absolute difference of neighbouring pixels of the teacher's "
        "inputs, DeepInversion's image prior); 0 = off.",
    )
    class_prior: float = option(
        0.0,
        "Beyond the paper. Makes the generator class-conditional (one-hot class "
        "beside z, every class equally often in a batch) and adds this weight x "
        "the teacher's cross entropy on those classes to its loss (Fast, NAYER); "
        "0 = off.",
    )
    adversarial_weight: float = option(
        1.0,
        "Beyond the paper. Weight of the adversarial term in the generator's loss "
        "(1 in the paper).",
    )
    adversarial_mask: bool = option(
        False,
        "Beyond the paper. The generator maximises the disagreement only on images "
        "both networks put in the same class (CMI, Fast).",
    )
    clip_images: bool = option(
        False,
        "Beyond the paper. Clip the generator's images to the range of real pixels "
        "([0, 1] on the pixel scale, mapped into the teacher's input space) before "
        "either network sees them; the paper's images are unbounded.",
    )
    # Reuse (CMI, Fast): a pool of past pseudo images for the student.
    replay_size: int = option(
        0,
        "Beyond the paper. Keep the last N pseudo images in a replay pool (in the "
        "checkpoint) and train the student on batches drawn from it; 0 = off.",
    )
    replay_steps: int = option(
        0,
        "Student steps per iteration on replay batches (random crop + flip, the "
        "teacher's outputs on the augmented batch), after the --n_s steps on the "
        "new batch.",
    )
    replay_temperature: float = option(
        1.0,
        "Softmax temperature of the student's KL on replay batches, the loss scaled "
        "by its square (Hinton et al.; the replay methods use 20); 1 = the KL of "
        "the student's other steps.",
    )
    replay_mix: str = option(
        "none",
        "Mix each replay batch with a shuffled copy of itself before the teacher "
        "labels it: mixup (a per-image blend, weight ~ U(0, 1)) or cutmix (a box of "
        "a U(0, 1) share of the area pasted from the partner); the student matches "
        "the teacher on the mixed images (function matching, arXiv 2106.05237).",
        choices=REPLAY_MIXES,
    )
    student_optimizer: str = option(
        "adam",
        "adam (the paper's) or sgd (momentum 0.9, as the replay methods use); "
        "cosine-annealed from --student_lr either way.",
        choices=STUDENT_OPTIMIZERS,
    )
    student_weight_decay: float = option(
        0.0, "L2 added to the student's gradient (PyTorch-style; 0 in the paper)."
    )
    student_ema: float = option(
        0.0,
        "Beyond the paper. Keep an exponential moving average of the student's "
        "weights with this decay per iteration (e.g. 0.99, Polyak averaging); it is "
        "the run's student (evaluated, saved, exported; BatchNorm statistics "
        "measured anew for it on replay-pool batches, or without a pool on "
        "generator images), and evaluations also report the live student's; "
        "0 = off.",
    )

    def metric_tags(self) -> tuple[str, ...]:
        """The metric tags the iteration returns under these settings."""
        optional = {
            "train/bn_loss": self.bn_prior,
            "train/balance_loss": self.balance_prior,
            "train/tv_loss": self.tv_prior,
            "train/class_loss": self.class_prior,
            "train/replay_loss": self.replay_size,
            "train/replay_kl": self.replay_size,
        }
        return METRICS + tuple(tag for tag, used in optional.items() if used)

    def resolved_schedule(self) -> int:
        return self.schedule_iterations or self.total_iterations

    def validate(self) -> None:
        for name in (
            "generator_steps",
            "total_iterations",
            "student_lr",
            "generator_lr",
            "temperature",
            "replay_temperature",
            "grad_clip",
        ):
            positive(name, getattr(self, name))
        for name in (
            "beta",
            "bn_prior",
            "balance_prior",
            "tv_prior",
            "class_prior",
            "adversarial_weight",
            "replay_size",
            "replay_steps",
            "student_steps",
            "student_weight_decay",
        ):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.student_ema < 1.0:
            raise UserError(
                f"student_ema must be in [0, 1) (a decay per iteration, e.g. 0.99; 0 "
                f"= off), got {self.student_ema}"
            )
        check_choice("adversarial_loss", self.adversarial_loss, ADVERSARIAL_LOSSES)
        check_choice("student_optimizer", self.student_optimizer, STUDENT_OPTIMIZERS)
        check_choice("replay_mix", self.replay_mix, REPLAY_MIXES)
        if bool(self.replay_size) != bool(self.replay_steps):
            raise UserError(
                "replay needs both --replay_size (images kept) and --replay_steps "
                f"(student steps on them), got {self.replay_size} and "
                f"{self.replay_steps}"
            )
        if not self.student_steps and not self.replay_steps:
            raise UserError(
                "the student never trains: give --n_s > 0 or replay (--replay_size, "
                "--replay_steps)"
            )
        if self.schedule_iterations is not None and (
            self.schedule_iterations < self.total_iterations
        ):
            raise UserError(
                f"schedule_iterations ({self.schedule_iterations}) must be at least "
                f"total_iterations ({self.total_iterations})"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistillConfig(RunOptions, GameConfig):
    """A zero-shot run. Defaults are the paper's (ZSKT, arXiv 1905.09768, Sec. 3-4).

    The method's fields (steps, learning rates, schedule, beta, ...) come from
    GameConfig. dataset=None takes the teacher's dataset; it is used for evaluation
    only. eval_every=None evaluates every 1% of the run.
    """

    teacher: str = required(
        "The teacher: a zskt-tf-teacher (or zskt-tf-import-torch) run directory or "
        "its teacher.weights.h5, embedded:<name>, or a Keras model saved as .keras."
    )
    dataset: str | None = option(
        None,
        "Evaluation dataset; default: the teacher's (none for a .keras teacher: "
        "the run then reports agreement on generator samples). No training image "
        "is ever read.",
    )
    student_depth: int = option(16, "Student WRN depth (6n+4).")
    student_width: int = option(1, "Student WRN widening factor.")
    student: str | None = option(
        None,
        "The student instead of --student_depth/--student_width: wrn-D-K, or a "
        ".keras file whose architecture is trained from scratch (fresh weights "
        "from each seed).",
    )
    input_scale: str | None = option(
        None,
        "How the teacher's inputs are scaled: 0,255 | 0,1 | -1,1 | imagenet | "
        "mean=M1,M2,M3:std=S1,S2,S3 (on the [0, 1] pixel scale). Required for a "
        ".keras teacher; a zskt_tf teacher records its own.",
    )
    image_stats: str | None = option(
        None,
        "The pixel statistics the generator's standardised images are read with, "
        "mean=M1,M2,M3:std=S1,S2,S3 on the [0, 1] scale (e.g. the data's own, if "
        "known). Default: the teacher's normalisation for a standardising "
        "convention (the paper's identity), mean 0.5 and std 0.25 for a range.",
    )
    attention_pairs: str | None = option(
        None,
        "Layers whose attention maps the student matches, "
        "teacher_layer:student_layer,... (names or nested paths), or auto: the last "
        "feature map of each size both networks have. Default: the three groups of "
        "two Wide ResNets (the paper), auto otherwise.",
    )
    batch_size: int = option(128, "Pseudo batch size.")
    z_dim: int = option(100, "Noise dimension.")
    eval_every: int | None = option(
        None, "Iterations between test evaluations (default: 1% of the run)."
    )
    seed: int = option(0, "Seed of the student, the generator and the noise.")
    checkpoint_every: int | None = option(
        None, "Iterations between checkpoints (default: at every evaluation)."
    )
    log_every: int = option(10, "Iterations between TensorBoard scalars.")

    def resolved_eval_every(self) -> int:
        return self.eval_every or max(1, self.total_iterations // 100)

    def validate(self) -> None:
        super().validate()
        check_architecture(self.student_depth, self.student_width)
        for name in ("batch_size", "z_dim"):
            positive(name, getattr(self, name))
        if self.eval_every is not None:
            positive("eval_every", self.eval_every)
        if self.batch_size < 2:
            raise UserError(
                "batch_size must be at least 2 (BatchNorm batch statistics)"
            )
        if self.replay_size and self.replay_size < self.batch_size:
            raise UserError(
                f"replay_size ({self.replay_size}) must hold at least one batch "
                f"({self.batch_size})"
            )
        if self.replay_temperature != 1.0 and (
            not self.replay_size or self.adversarial_loss != "kl"
        ):
            raise UserError(
                "--replay_temperature applies to the student's KL on replay batches "
                "only: give --replay_size and --replay_steps, and --adversarial_loss=kl"
            )
        if self.replay_mix != "none" and not self.replay_size:
            raise UserError(
                f"--replay_mix={self.replay_mix} mixes replay batches: give "
                "--replay_size and --replay_steps too"
            )
        if self.student_weight_decay and self.student_optimizer != "sgd":
            raise UserError(
                "--student_weight_decay applies to --student_optimizer=sgd only"
            )


# ------------------------------------------------------------------ presets

# Named sets of DistillConfig values. A preset replaces defaults only: any setting
# given explicitly (a flag on the command line, a keyword in Python) wins.
PRESETS: dict[str, dict] = {
    # Every setting the paper's (the defaults).
    "paper": {},
    # A complete schedule for a small budget (docs/RESULTS.md, "Finished students on
    # a budget"): 500 iterations annealed to 0 (an iteration costs 1.2-1.6 of one of
    # the paper's on a CPU, more with a larger teacher: each step on the pool runs the
    # teacher on its batch); the student takes 2 steps on each new batch and 10
    # on batches drawn from a pool of the last 32,768 pseudo images; the generator
    # adds the teacher's BatchNorm statistics (weight 10) and a class-conditional
    # cross entropy (weight 0.5) to the paper's adversarial loss.
    "budget": dict(
        total_iterations=500,
        student_steps=2,
        replay_size=32_768,
        replay_steps=10,
        bn_prior=10.0,
        class_prior=0.5,
    ),
}


def preset(name: str | None) -> dict:
    """The values of a preset (PRESETS); None is the paper's."""
    if name is None:
        return {}
    if name not in PRESETS:
        raise UserError(
            f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}"
        )
    return dict(PRESETS[name])


def preset_description(name: str | None, config: DistillConfig | None = None) -> str:
    """One line: which settings of the preset differ from the paper's.

    With the run's config, each value is the one the run uses: a setting given
    explicitly over the preset's is shown with the preset's value beside it, and
    the method's other settings given away from the paper's follow.
    """
    values = preset(name)
    if not values:
        return "preset paper: every setting the paper's"

    def flag(field, used, note):
        name = field.metadata["flag"] or field.name
        return f"--{name}={used} (paper: {field.default}{note})"

    defaults = {f.name: f for f in dataclasses.fields(DistillConfig)}
    changes = []
    for key, value in values.items():
        used = value if config is None else getattr(config, key)
        given = "" if used == value else f", given over the preset's {value}"
        changes.append(flag(defaults[key], used, given))
    for field in dataclasses.fields(GameConfig) if config is not None else ():
        used = getattr(config, field.name)
        if field.name not in values and used != field.default:
            changes.append(flag(field, used, ", given"))
    return f"preset {name}, differs from the paper's settings in: {', '.join(changes)}"
