"""Checkpointing and interruption: runs resume by rerunning the same command."""

from __future__ import annotations

import contextlib
import pathlib
import signal
import threading

import tensorflow as tf
from absl import logging

CHECKPOINT_SUBDIR = "checkpoints"


class Interrupted(Exception):
    """Raised by a training loop after it saved a checkpoint on SIGINT/SIGTERM."""

    def __init__(self, where: str):
        super().__init__(
            f"interrupted at {where}; checkpoint saved. Rerun the same "
            "command to resume."
        )


class StoppedAt(Interrupted):
    """Raised when a run reaches its stop_at (not a signal): a caller running several
    seeds goes on to the next seed, which stops at the same point."""


class InterruptGuard(contextlib.AbstractContextManager):
    """Turns SIGINT/SIGTERM into a flag that the loop checks between steps.

    A step is never cut in half, so the checkpoint written after it is consistent. A
    second Ctrl-C while the loop finishes its step restores the default behaviour.
    Outside the main thread (where signal handlers cannot be installed) it is inert.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        del frame
        self.requested = True
        logging.warning(
            "%s received: stopping after this step and saving a checkpoint",
            signal.Signals(signum).name,
        )
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False


def checkpoint_manager(
    output_dir: str | pathlib.Path, max_to_keep: int = 2, **trackables
) -> tuple[tf.train.Checkpoint, tf.train.CheckpointManager]:
    """A tf.train.Checkpoint of the given objects, managed in output_dir/checkpoints.

    TensorFlow writes each checkpoint's files before it atomically rewrites the
    'checkpoint' index, so a run killed mid-save restores the previous checkpoint.
    """
    checkpoint = tf.train.Checkpoint(**trackables)
    directory = pathlib.Path(output_dir) / CHECKPOINT_SUBDIR
    manager = tf.train.CheckpointManager(checkpoint, str(directory), max_to_keep)
    return checkpoint, manager


def restore_latest(
    checkpoint: tf.train.Checkpoint, output_dir: str | pathlib.Path
) -> bool:
    """Restores the newest checkpoint of output_dir, if any; returns whether it did.

    Checkpoints hold one copy of each variable, so a run saved under one
    tf.distribute strategy resumes under another (e.g. TPU -> CPU)."""
    latest = tf.train.latest_checkpoint(
        str(pathlib.Path(output_dir) / CHECKPOINT_SUBDIR)
    )
    if latest is None:
        return False
    checkpoint.restore(latest).assert_existing_objects_matched()
    logging.info("resumed from %s", latest)
    return True
