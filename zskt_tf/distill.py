"""Zero-shot distillation runs: input checks, one seed's run directory, several
seeds. The trainer is zskt_tf.zero_shot's, the game zskt_tf.adversarial's."""

from __future__ import annotations

import dataclasses
import pathlib

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from zskt_tf import (
    averaging,
    callable_module,
    checkpoints,
    datasets,
    distribution,
    players,
    run_loop,
    runs,
)
from zskt_tf.configs import DistillConfig, check_seed
from zskt_tf.errors import UserError
from zskt_tf.training import check_accelerator_options, mixed_precision_scope
from zskt_tf.zero_shot import (  # noqa: F401 (part of this module's interface)
    COLLAPSED_KL,
    EarlyCollapseCheck,
    Inputs,
    ZeroShotTrainer,
    collapsed,
)

# Keys that may differ between a run and its resumption without changing the result.
RUN_CONTROL_KEYS = (
    "output_dir",
    "data_dir",
    "cache_dir",
    "stop_at",
    "eval_every",
    "checkpoint_every",
    "log_every",
    "teacher",
    "restart",
)
# The multi-seed summary directory records the run of every seed; a seed's own
# directory is one seed's run, so there the seed must match.
SUMMARY_CONTROL_KEYS = (*RUN_CONTROL_KEYS, "seeds", "seed")


def check_inputs(
    config: DistillConfig,
    data: datasets.ImageData | None = None,
    strategy=None,
    teacher: keras.Model | None = None,
    student=None,
) -> Inputs:
    """Checks everything a run needs before anything is written.

    Args:
        config: the run.
        data: the evaluation data, if already loaded.
        strategy: the run's tf.distribute strategy.
        teacher: a keras.Model to use instead of config.teacher.
        student: a keras.Model, a function building one, or "wrn-D-K" / a .keras
            path, instead of config.student (or config.student_depth/width).

    Returns:
        The checked inputs: the frozen teacher (built under the run's precision
        policy in the strategy's scope), the student's builder, the evaluation data
        (loaded from config.dataset or the teacher's dataset; None when there is
        neither), its DatasetInfo and the attention pairs.

    Raises:
        UserError: bad configuration, a missing or misfitting teacher or student,
            attention pairs that cannot be made, or a dataset that does not fit.
    """
    config.validate()
    strategy = strategy or tf.distribute.get_strategy()
    check_accelerator_options(config.jit, config.mixed_precision, strategy)
    with strategy.scope(), mixed_precision_scope(config.mixed_precision):
        loaded = players.load_teacher(
            config.teacher if teacher is None else teacher,
            config.input_scale,
            config.image_stats,
        )
    student_spec = players.student_from(
        student
        or config.student
        or players.wrn_student(config.student_depth, config.student_width)
    )
    dataset = config.dataset or loaded.dataset
    if data is None and dataset:
        data = datasets.load_dataset(dataset, config.data_dir, config.cache_dir)
    if data is not None:
        if data.info.num_classes != loaded.num_classes:
            raise UserError(
                f"dataset {dataset or data.info.name} has {data.info.num_classes} "
                f"classes but the teacher predicts {loaded.num_classes}; evaluate on "
                f"the teacher's dataset ({loaded.dataset or 'its own'})"
            )
        data = datasets.fit_to_shape(data, loaded.image_shape, "the teacher")
    info = loaded.dataset_info(None if data is None else data.info)
    if config.bn_prior and not networks_have_batch_norm(loaded):
        raise UserError(
            f"--bn_prior needs BatchNormalization layers and the teacher "
            f"({loaded.description}) has none; drop --bn_prior"
        )
    # A throw-away student, to check before anything is written that it fits the
    # teacher and that its layers pair (the trainer pairs its own student's).
    probe = student_spec.build(loaded.image_shape, loaded.num_classes)
    players.check_student(probe, loaded)
    if config.student_ema:  # the average is a second student
        averaging.check_copy(
            probe, student_spec.build(loaded.image_shape, loaded.num_classes)
        )
    pairs = players.attention_pairs(
        loaded, probe, config.attention_pairs, config.beta, log=False
    )
    return Inputs(loaded, student_spec, data, info, pairs)


def networks_have_batch_norm(teacher: players.Teacher) -> bool:
    from zskt_tf import networks

    return bool(networks.batch_norm_layers(teacher.model))


def distill_one_seed(
    config: DistillConfig,
    data: datasets.ImageData | None = None,
    strategy=None,
    teacher: keras.Model | None = None,
    student=None,
    return_student: bool = False,
):
    """Runs (or resumes) one zero-shot run in config.output_dir.

    Args:
        config: the run.
        data: the evaluation data, if already loaded.
        strategy: a tf.distribute strategy (e.g. a TPUStrategy from a notebook);
            default: the current context's.
        teacher, student: models given in Python (see check_inputs).
        return_student: also return the trained student (a keras.Model).

    Returns:
        The results dict also written to results.json (and the student).

    Raises:
        UserError: bad configuration or teacher, before any training.
        checkpoints.Interrupted: SIGINT/SIGTERM or stop_at; a checkpoint was saved.
    """
    strategy = strategy or tf.distribute.get_strategy()
    inputs = check_inputs(config, data, strategy, teacher, student)
    results, trained = _distill_one_seed(config, inputs, strategy)
    return (results, trained) if return_student else results


def _seed_record(config: DistillConfig, inputs: Inputs) -> dict:
    """The config.json of one seed's run directory. A run between two Wide ResNets
    records exactly what it always has, so older runs still resume."""
    teacher, student = inputs.teacher, inputs.student
    record = dataclasses.asdict(config) | {
        "kind": "zero_shot_student",
        "dataset": config.dataset or teacher.dataset,
        "teacher_architecture": list(teacher.wrn or ()) or teacher.description,
        "dataset_info": inputs.info.to_json(),
        "num_classes": inputs.info.num_classes,
        "input_shape": list(inputs.info.image_shape),
    }
    if student.wrn:
        record |= {"depth": student.wrn[0], "width": student.wrn[1]}
    else:
        record["student_architecture"] = student.source
    if not teacher.wrn:
        record["input_scale"] = teacher.scale.spec
    return record


def _distill_one_seed(config: DistillConfig, inputs: Inputs, strategy):
    """distill_one_seed on inputs check_inputs has already checked and loaded;
    returns (results, the trained student)."""
    with runs.open_run(
        config.output_dir,
        _seed_record(config, inputs),
        ignore=RUN_CONTROL_KEYS,
        defaults=runs.field_defaults(config),
        write=distribution.is_chief(strategy),
    ):
        trainer = ZeroShotTrainer(config, inputs, strategy)
        settings = run_loop.LoopSettings(
            output_dir=config.output_dir,
            total_steps=config.total_iterations,
            eval_every=config.resolved_eval_every(),
            checkpoint_every=config.checkpoint_every,
            log_every=config.log_every,
            stop_at=config.stop_at,
            step_name="iteration",
            progress_label="iteration",
            evaluate_at_start=True,
            restart=config.restart,
            metric=inputs.metric,
        )
        results = run_loop.run(trainer, settings, config.metric_tags(), strategy)
        return results, trainer.kept_student


def _finished_seed(config: DistillConfig, inputs: Inputs) -> dict | None:
    """The results of a seed whose run is complete, or None. Both of its records
    are checked, so a damaged one is reported rather than trusted."""
    directory = pathlib.Path(config.output_dir)
    results = directory / runs.RESULTS_FILE
    if not results.is_file():
        return None
    runs.prepare_output_dir(
        directory,
        _seed_record(config, inputs),
        ignore=RUN_CONTROL_KEYS,
        defaults=runs.field_defaults(config),
        write=False,
    )
    return runs.read_json(
        results,
        fix="delete it and rerun the same command: the run rewrites it from its "
        "last checkpoint",
    )


def _earlier_seeds(
    config: DistillConfig, inputs: Inputs, seeds: tuple[int, ...]
) -> dict[int, dict]:
    """The results of the seeds of config.output_dir that earlier calls finished,
    other than seeds (one seed per Colab session into one directory), by seed. A seed
    still running or stopped is not one of them; one whose records do not match or
    are damaged is left out with a warning that names the file."""
    found = {}
    for seed in runs.seed_dirs(config.output_dir):
        if seed in seeds:
            continue
        try:
            results = _finished_seed(_seed_config(config, seed), inputs)
        except UserError as error:
            logging.warning("left out of the summary: %s", error)
            continue
        if results is not None:
            found[seed] = results
    return found


def _seed_config(config: DistillConfig, seed: int) -> DistillConfig:
    """One seed's run of a multi-seed config, in output_dir/seed_<seed>."""
    return dataclasses.replace(
        config,
        seed=seed,
        output_dir=str(runs.seed_dir(config.output_dir, seed)),
    )


def distill(
    config: DistillConfig,
    seeds: tuple[int, ...] = (0,),
    strategy=None,
    teacher: keras.Model | None = None,
    student=None,
) -> dict:
    """Runs one zero-shot run per seed in output_dir/seed_<s>, then summarises.

    The paper reports the final accuracy as mean +- population std over seeds 0, 1, 2
    (ZSKT Table 1). Rerunning the same call resumes whichever seed was interrupted.
    With config.stop_at, every seed runs to stop_at before the call stops.
    strategy: a tf.distribute strategy (default: the current context's).
    teacher, student: models given in Python (see check_inputs); each seed's
    student is built afresh from its seed.

    Returns:
        {"seeds": {...}, "test_accuracy_mean": ..., "test_accuracy_std": ...} (or
        "agreement_..." without a test set), also in output_dir/results.json: over
        seeds and every other seed an earlier call into output_dir finished, so
        seeds run one per call (or side by side) are summarised together.

    Raises:
        checkpoints.StoppedAt: the seeds not finished reached stop_at (checkpoints
            saved); checkpoints.Interrupted: SIGINT/SIGTERM stopped the current seed.
    """
    if not seeds:
        raise UserError("give at least one seed")
    for seed in seeds:
        check_seed(seed, "each of --seeds")
    strategy = strategy or tf.distribute.get_strategy()
    chief = distribution.is_chief(strategy)
    # Everything is checked before output_dir is created.
    inputs = check_inputs(config, strategy=strategy, teacher=teacher, student=student)
    output_dir = pathlib.Path(config.output_dir)
    summary_config = dataclasses.asdict(config) | {
        "seeds": list(seeds),
        "kind": "zero_shot_seeds",
    }
    runs.prepare_output_dir(
        output_dir,
        summary_config,
        ignore=SUMMARY_CONTROL_KEYS,
        write=chief,
        defaults=runs.field_defaults(config),
    )
    per_seed, stopped = {}, []
    for seed in seeds:
        seed_config = _seed_config(config, seed)
        finished = _finished_seed(seed_config, inputs)
        if finished is not None:
            per_seed[seed] = finished
            continue
        try:
            per_seed[seed], _ = _distill_one_seed(seed_config, inputs, strategy)
        except checkpoints.StoppedAt:
            stopped.append(seed)  # stop_at holds for every seed: on to the next one
    if stopped:
        raise checkpoints.StoppedAt(
            f"iteration {config.stop_at}/{config.total_iterations} "
            f"(seed{'s' if len(stopped) > 1 else ''} "
            f"{', '.join(map(str, stopped))})"
        )
    earlier = _earlier_seeds(config, inputs, seeds)
    if earlier:
        logging.info(
            "the summary also counts seed%s %s, finished in %s by another call",
            "s" if len(earlier) > 1 else "",
            ", ".join(map(str, sorted(earlier))),
            output_dir,
        )
    per_seed |= earlier
    counted = sorted(per_seed)
    metric = inputs.metric
    finals = np.array([per_seed[s][metric] for s in counted])
    summary = {
        "metric": metric,
        "seeds": {str(s): per_seed[s][metric] for s in counted},
        f"{metric}_mean": float(finals.mean()),
        f"{metric}_std": float(finals.std()),  # population std, as the paper
        "teacher_test_accuracy": per_seed[seeds[0]]["teacher_test_accuracy"],
    }
    if chief:
        runs.write_json(output_dir / runs.RESULTS_FILE, summary)
    return summary


def _keras_style_distill():
    from zskt_tf import api

    return api.distill


# zskt_tf.distill(teacher, student, ...) is the Keras-style entry point
# (zskt_tf.api.distill: models in, the trained student out); this module keeps its
# functions: distill.distill(config, seeds), distill.DistillConfig.
callable_module.make_callable(__name__, _keras_style_distill)
