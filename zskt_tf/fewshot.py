"""Few-shot baselines (ZSKT, arXiv 1905.09768, Sec. 4.1, Table 1 and Figure 2):
KD+AT with a teacher, "no teacher" cross entropy, and fine-tuning a zero-shot
student, all on M images per class."""

from __future__ import annotations

import dataclasses
import pathlib

import keras
import tensorflow as tf

from zskt_tf import datasets, distribution, losses, model_io, runs, supervised
from zskt_tf.configs import FewShotConfig
from zskt_tf.errors import UserError
from zskt_tf.training import (
    check_accelerator_options,
    mixed_precision_scope,
)
from zskt_tf.wide_resnet import TAPS, check_taps_match, wide_resnet

RUN_CONTROL_KEYS = (
    "output_dir",
    "data_dir",
    "cache_dir",
    "stop_at",
    "log_every",
    "eval_every",
    "teacher",
    "init_student",
    "restart",
)


def kd_at_loss_fn(teacher, alpha: float, temperature: float, beta: float):
    """loss_fn for supervised.make_train_step: KD+AT against a frozen teacher (the
    attention taps only with beta > 0, so any student works at beta 0)."""

    def loss_fn(images, labels, outputs):
        teacher_out = teacher(images, training=False)
        taps = TAPS if beta else ()
        return losses.kd_at_loss(
            labels,
            outputs["logits"],
            tf.stop_gradient(teacher_out["logits"]),
            [outputs[k] for k in taps],
            [tf.stop_gradient(teacher_out[k]) for k in taps],
            alpha=alpha,
            temperature=temperature,
            beta=beta,
        )

    return loss_fn


def _networks(config: FewShotConfig, info, strategy):
    """The student (initialised from --init_student if given) and the frozen
    teacher (or None), built in the strategy's scope and checked against the data.

    Raises:
        UserError: a teacher or initial student that does not fit.
    """
    keras.utils.set_random_seed(config.seed)
    with strategy.scope(), mixed_precision_scope(config.mixed_precision):
        student = wide_resnet(
            config.student_depth,
            config.student_width,
            info.num_classes,
            info.image_shape,
            name="student",
            synchronized=distribution.replicas(strategy) > 1,
        )
        teacher = model_io.load_teacher(config.teacher) if config.teacher else None
    if teacher is not None:
        teacher_classes = teacher.output["logits"].shape[-1]
        if teacher_classes != info.num_classes:
            raise UserError(
                f"the teacher predicts {teacher_classes} classes but "
                f"{config.dataset} has {info.num_classes}"
            )
        if config.beta:
            check_taps_match(teacher, student)
    if config.init_student:
        weights, init_config = model_io.resolve_run(
            config.init_student, model_io.STUDENT_WEIGHTS
        )
        if (init_config.get("depth"), init_config.get("width")) != (
            config.student_depth,
            config.student_width,
        ):
            raise UserError(
                f"--init_student is WRN-{init_config.get('depth')}-"
                f"{init_config.get('width')} but the student is WRN-"
                f"{config.student_depth}-{config.student_width}"
            )
        model_io.load_weights_checked(student, weights, "initial student")
    return student, teacher


def _keras_student(config: FewShotConfig, data: datasets.ImageData, strategy):
    """A .keras --init_student (a zero-shot run of a student that is not a Wide
    ResNet): the student, and the data in its input convention (recorded by its
    run), checked against it and against the teacher.

    Raises:
        UserError: attention transfer asked for, a teacher that scales its inputs
            otherwise, or data that does not fit the student.
    """
    from zskt_tf import networks

    with strategy.scope():
        student, recorded = model_io.load_network(config.init_student)
    shape, classes = networks.check_classifier(student.model, "the initial student")
    if classes != data.info.num_classes:
        raise UserError(
            f"the initial student predicts {classes} classes but {config.dataset} "
            f"has {data.info.num_classes}"
        )
    scale = datasets.DatasetInfo.from_json(recorded["dataset_info"])
    if config.teacher:
        if config.beta:
            raise UserError(
                "KD+AT's attention transfer needs Wide ResNet taps and the initial "
                f"student is {student.name} (a .keras model): pass --beta=0"
            )
        teacher_info = model_io.teacher_record(config.teacher)["dataset_info"]
        if (tuple(teacher_info["mean"]), tuple(teacher_info["std"])) != (
            scale.mean,
            scale.std,
        ):
            raise UserError(
                "the teacher and the initial student scale their inputs differently "
                f"(mean/std {teacher_info['mean']}/{teacher_info['std']} and "
                f"{list(scale.mean)}/{list(scale.std)}); use the student's own teacher"
            )
    data = datasets.fit_to_shape(data, shape, "the initial student")
    info = dataclasses.replace(data.info, mean=scale.mean, std=scale.std)
    return student, dataclasses.replace(data, info=info)


def train_fewshot(
    config: FewShotConfig, data: datasets.ImageData | None = None, strategy=None
) -> dict:
    """Trains (or resumes) a few-shot student; returns the results dict.

    strategy: a tf.distribute strategy (default: the current context's).

    Raises:
        UserError: M larger than a class, mismatched class counts, bad config.
        checkpoints.Interrupted: SIGINT/SIGTERM or stop_at; a checkpoint was saved.
    """
    config.validate()
    strategy = strategy or tf.distribute.get_strategy()
    check_accelerator_options(config.jit, config.mixed_precision, strategy)
    data = data or datasets.load_dataset(
        config.dataset, config.data_dir, config.cache_dir
    )
    if len(data.train_images) == 0:
        raise UserError(f"dataset {config.dataset} has no training split")
    keras_student = model_io.is_keras_file(config.init_student) or (
        config.init_student is not None
        and (pathlib.Path(config.init_student) / model_io.STUDENT_MODEL).is_file()
    )
    if keras_student:
        student, data = _keras_student(config, data, strategy)
        with strategy.scope():
            teacher = model_io.load_teacher(config.teacher) if config.teacher else None
    else:
        student, teacher = _networks(config, data.info, strategy)
    images, labels = datasets.few_shot_subset(
        data.train_images, data.train_labels, config.m_per_class, config.seed
    )
    info = data.info
    steps_per_full_epoch = -(-len(data.train_images) // config.batch_size)
    total_steps = config.reference_epochs * steps_per_full_epoch
    record = dataclasses.asdict(config) | {
        "kind": "fewshot_student",
        **(
            {"student_architecture": student.name}
            if keras_student
            else {"depth": config.student_depth, "width": config.student_width}
        ),
        "num_classes": info.num_classes,
        "input_shape": list(info.image_shape),
        "dataset_info": info.to_json(),
        "subset_size": len(images),
        "total_steps": total_steps,
        "method": "kd_at" if teacher is not None else "no_teacher",
    }
    chief = distribution.is_chief(strategy)
    with runs.open_run(
        config.output_dir,
        record,
        ignore=RUN_CONTROL_KEYS,
        write=chief,
        defaults=runs.field_defaults(config),
    ):
        results = supervised.train_supervised(
            model=student,
            train_images=images,
            train_labels=labels,
            data=data,
            recipe=config,
            output_dir=config.output_dir,
            seed=config.seed,
            total_steps=total_steps,
            eval_every=config.eval_every or max(1, total_steps // 100),
            weights_name=model_io.STUDENT_WEIGHTS,
            loss_fn=(
                kd_at_loss_fn(teacher, config.alpha, config.temperature, config.beta)
                if teacher is not None
                else supervised.cross_entropy
            ),
            mixed_precision=config.mixed_precision,
            jit=config.jit,
            stop_at=config.stop_at,
            restart=config.restart,
            log_every=config.log_every,
            label="few-shot step",
            strategy=strategy,
        )
        results |= {
            "m_per_class": config.m_per_class,
            "subset_size": len(images),
            "method": record["method"],
        }
        if chief:
            runs.write_json(f"{config.output_dir}/{runs.RESULTS_FILE}", results)
        return results
