"""Teacher training with the authors' recipe (their code's recipe), resumable."""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from zskt_tf import datasets, distribution, model_io, runs, supervised
from zskt_tf.configs import TeacherConfig
from zskt_tf.errors import UserError
from zskt_tf.training import (
    check_accelerator_options,
    mixed_precision_scope,
)
from zskt_tf.wide_resnet import wide_resnet

# Keys of the config that may change between a run and its resumption.
RUN_CONTROL_KEYS = (
    "output_dir",
    "data_dir",
    "cache_dir",
    "stop_at",
    "log_every",
    "restart",
)


def train_teacher(
    config: TeacherConfig, data: datasets.ImageData | None = None, strategy=None
) -> dict:
    """Trains (or resumes) a teacher and writes its run directory.

    Args:
        config: the run's configuration.
        data: the dataset already in memory; loaded from config otherwise.
        strategy: a tf.distribute strategy (the global batch is split over its
            replicas); default: the current context's.

    Returns:
        The results dict also written to results.json (test accuracy at the end,
        epochs, wall time, images/s, and the accuracy after every epoch).

    Raises:
        UserError: bad configuration, or an output_dir holding another run.
        checkpoints.Interrupted: SIGINT/SIGTERM or stop_at; a checkpoint was saved.
    """
    config.validate()
    strategy = strategy or tf.distribute.get_strategy()
    check_accelerator_options(config.jit, config.mixed_precision, strategy)
    epochs = config.resolved_epochs()
    data = data or datasets.load_dataset(
        config.dataset, config.data_dir, config.cache_dir
    )
    if len(data.train_images) == 0:
        raise UserError(
            f"dataset {config.dataset} has no training split (it is an "
            "evaluation subset); train on the full dataset"
        )
    record = dataclasses.asdict(config) | {
        "kind": "teacher",
        "epochs": epochs,
        "num_classes": data.info.num_classes,
        "input_shape": list(data.info.image_shape),
        "dataset_info": data.info.to_json(),
    }
    with runs.open_run(
        config.output_dir,
        record,
        ignore=RUN_CONTROL_KEYS,
        defaults=runs.field_defaults(config),
        write=distribution.is_chief(strategy),
    ):
        keras.utils.set_random_seed(config.seed)
        with strategy.scope(), mixed_precision_scope(config.mixed_precision):
            model = wide_resnet(
                config.depth,
                config.width,
                data.info.num_classes,
                data.info.image_shape,
                synchronized=distribution.replicas(strategy) > 1,
            )
        steps_per_epoch = -(-len(data.train_images) // config.batch_size)
        return supervised.train_supervised(
            model=model,
            train_images=data.train_images,
            train_labels=data.train_labels,
            data=data,
            recipe=config,
            output_dir=config.output_dir,
            seed=config.seed,
            total_steps=epochs * steps_per_epoch,
            eval_every=steps_per_epoch,
            weights_name=model_io.TEACHER_WEIGHTS,
            loss_fn=supervised.smoothed_cross_entropy(config.label_smoothing),
            mixed_precision=config.mixed_precision,
            jit=config.jit,
            stop_at=config.stop_at,
            restart=config.restart,
            log_every=config.log_every,
            label="teacher step",
            strategy=strategy,
        )
