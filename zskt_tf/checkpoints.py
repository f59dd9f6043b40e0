"""Checkpointing and interruption: runs resume by rerunning the same command, from
the newest checkpoint that reads back whole."""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import re
import shutil
import signal
import threading
import time

import tensorflow as tf
from absl import logging

from zskt_tf import runs
from zskt_tf.errors import UserError

CHECKPOINT_SUBDIR = runs.CHECKPOINT_SUBDIR
DAMAGED_SUBDIR = "damaged"  # unreadable checkpoints are moved here, never deleted


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


def checkpoint_directory(output_dir: str | pathlib.Path) -> pathlib.Path:
    return pathlib.Path(output_dir) / CHECKPOINT_SUBDIR


def checkpoint_manager(
    checkpoint: tf.train.Checkpoint,
    output_dir: str | pathlib.Path,
    max_to_keep: int = 2,
) -> tf.train.CheckpointManager:
    """A CheckpointManager of checkpoint in output_dir/checkpoints.

    TensorFlow writes each checkpoint's files before it atomically rewrites the
    'checkpoint' index, so a run killed mid-save restores the previous checkpoint.
    Create it after resume(), which may rewrite that index.
    """
    return tf.train.CheckpointManager(
        checkpoint, str(checkpoint_directory(output_dir)), max_to_keep
    )


def _number(prefix: pathlib.Path) -> int:
    return int(prefix.name.split("-")[-1])


def _candidates(directory: pathlib.Path) -> list[pathlib.Path]:
    """Every checkpoint prefix with an index or a data file, newest first. Read from
    the files themselves, not from the 'checkpoint' index, which may be damaged."""
    prefixes = set()
    for path in directory.glob("ckpt-*"):
        match = re.fullmatch(r"(ckpt-\d+)\.(index|data-\d+-of-\d+)", path.name)
        if match and path.is_file():
            prefixes.add(directory / match.group(1))
    return sorted(prefixes, key=_number, reverse=True)


def damage(prefix: pathlib.Path) -> str | None:
    """Why the checkpoint at prefix cannot be read, or None if every tensor reads
    back (TensorFlow checks each tensor's CRC-32C as it reads it)."""
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, IndexError, OSError) as error:
        return describe(error)
    return None


def _move_aside(prefix: pathlib.Path) -> pathlib.Path:
    """Moves a checkpoint's files into checkpoints/damaged/ (never deletes them)."""
    target = prefix.parent / DAMAGED_SUBDIR
    target.mkdir(exist_ok=True)
    for path in prefix.parent.glob(prefix.name + ".*"):
        destination = target / path.name
        if destination.exists():  # damaged twice at the same step: keep both
            destination = target / f"{path.name}.{int(time.time())}"
        os.replace(path, destination)
    return target


def _write_index(directory: pathlib.Path, prefixes: list[pathlib.Path]) -> None:
    """Rewrites the 'checkpoint' index (CheckpointState, text format) so that it lists
    exactly the given checkpoints, oldest first, with their files' times; the
    manager then keeps and deletes them as usual (an entry without a time later
    than last_preserved_timestamp would be kept forever)."""
    index = directory / "checkpoint"
    if not prefixes:
        index.unlink(missing_ok=True)
        return
    lines = [f'model_checkpoint_path: "{prefixes[-1].name}"']
    lines += [f'all_model_checkpoint_paths: "{p.name}"' for p in prefixes]
    lines += [
        f"all_model_checkpoint_timestamps: {pathlib.Path(f'{p}.index').stat().st_mtime}"
        for p in prefixes
    ]
    lines.append("last_preserved_timestamp: 0.0")
    runs.write_text(index, "\n".join(lines) + "\n")


def resume(
    trackables: dict,
    output_dir: str | pathlib.Path,
    restart: bool = False,
    repair: bool = True,
    optional: dict | None = None,
) -> tuple[tf.train.Checkpoint, pathlib.Path | None]:
    """The run's tf.train.Checkpoint, restored from the newest readable checkpoint
    of output_dir if there is one.

    A checkpoint that cannot be read (truncated, garbage bytes, an index without its
    data or data without its index) is named in one warning and moved to
    checkpoints/damaged/, and the next older one is tried. Leftovers of a save that
    never finished (TensorFlow's *_temp directories) are removed.

    Checkpoints hold one copy of each variable, so a run saved under one
    tf.distribute strategy resumes under another (e.g. TPU -> CPU).

    Args:
        trackables: the run's objects (networks, optimisers, RNGs, ...), built.
        output_dir: the run directory.
        restart: when checkpoints exist but none is readable, start from the
            beginning (the damaged ones stay in checkpoints/damaged/).
        repair: move damaged files aside and rewrite the index (the chief); False
            only reads (the other workers of a multi-worker run).
        optional: objects added to runs after some were checkpointed: tracked (and
            so saved from now on) only where the checkpoint resumed from has them,
            so that an older run still resumes; they keep their initial values.

    Returns:
        (the checkpoint of the objects, the prefix restored from or None for a run
        that starts from the beginning).

    Raises:
        UserError: checkpoints exist but none is readable, and restart is False.
    """
    directory = checkpoint_directory(output_dir)
    prefix = _newest_readable(directory, restart, repair)
    optional = optional or {}
    if prefix is not None:
        saved = {name.split("/")[0] for name, _ in tf.train.list_variables(str(prefix))}
        optional = {key: value for key, value in optional.items() if key in saved}
    checkpoint = tf.train.Checkpoint(**trackables, **optional)
    if prefix is not None:
        checkpoint.restore(str(prefix)).assert_existing_objects_matched()
        logging.info("resumed from %s", prefix)
    return checkpoint, prefix


def _newest_readable(
    directory: pathlib.Path, restart: bool, repair: bool
) -> pathlib.Path | None:
    """The newest checkpoint that reads back whole (see resume)."""
    if not directory.is_dir():
        return None
    if repair:
        for scratch in directory.glob("ckpt-*_temp*"):
            shutil.rmtree(scratch, ignore_errors=True)
    candidates, damaged = _candidates(directory), []
    for prefix in candidates:
        problem = damage(prefix)
        if problem is None:
            break
        damaged.append(prefix)
        where = _move_aside(prefix) if repair else prefix.parent
        logging.warning(
            "checkpoint %s cannot be read (%s); moved to %s, trying the one before",
            prefix.name,
            problem,
            where,
        )
    else:
        prefix = None
    if repair and candidates:
        # The index may be damaged too, or name checkpoints just moved aside.
        survivors = [p for p in candidates if p not in damaged]
        _write_index(directory, sorted(survivors, key=_number))
    if prefix is None:
        if damaged and not restart:
            raise UserError(
                f"no readable checkpoint in {directory}: all {len(damaged)} are "
                f"damaged (moved to {directory / DAMAGED_SUBDIR}); rerun with "
                "--restart to start this run again from the beginning"
            )
        if damaged:
            logging.warning("no readable checkpoint left: starting from the beginning")
        return None
    return prefix


def describe(error: BaseException) -> str:
    """An OS or TensorFlow error as one short line: its first line without
    TensorFlow's {{function_node ...}} prefix and [Op:...] suffix."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:\w+\]$", "", text)
    return (text or type(error).__name__)[:200]


def disk_full(error: BaseException) -> bool:
    """Whether an error from a write (Python, h5py or TensorFlow) is a full disk."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(error) or "Disk quota exceeded" in str(
        error
    )
