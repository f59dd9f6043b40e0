"""Output directories: atomic JSON files and the one-run-per-directory rule."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import uuid
from collections.abc import Iterable

from absl import logging

from zskt_tf import locks
from zskt_tf.errors import UserError

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
CHECKPOINT_SUBDIR = "checkpoints"
SEED_PREFIX = "seed_"


def seed_dir(output_dir: str | pathlib.Path, seed: int) -> pathlib.Path:
    """Where a multi-seed run keeps one seed's run: output_dir/seed_<seed>."""
    return pathlib.Path(output_dir) / f"{SEED_PREFIX}{seed}"


def seed_dirs(output_dir: str | pathlib.Path) -> dict[int, pathlib.Path]:
    """The seed runs in output_dir by seed; a folder no run names (seed_007) is not
    one of them."""
    found = {}
    for directory in pathlib.Path(output_dir).glob(f"{SEED_PREFIX}*"):
        number = directory.name.removeprefix(SEED_PREFIX)
        if number.isdigit() and seed_dir(output_dir, int(number)) == directory:
            found[int(number)] = directory
    return dict(sorted(found.items()))


def _entries(directory: pathlib.Path) -> list[pathlib.Path]:
    return list(directory.iterdir()) if directory.is_dir() else []


def _bookkeeping(path: pathlib.Path) -> bool:
    """The lock and temporary files of writes under way: not a run's contents."""
    return path.name == locks.LOCK_FILE or path.name.startswith((".tmp-", ".old-"))


@contextlib.contextmanager
def atomic_path(path: str | pathlib.Path):
    """Yields a temporary path beside `path` (same directory, name ending in path's
    name, so writers that check suffixes such as ".weights.h5" or ".keras" accept
    it); when the block succeeds the file is flushed to disk and renamed onto path.

    A crash, a full disk or an exception leaves either the old file or the new one
    under path, never half of one; the temporary file is removed on failure.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".tmp-{uuid.uuid4().hex[:8]}-{path.name}"
    try:
        yield temporary
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


@contextlib.contextmanager
def atomic_directory(path: str | pathlib.Path):
    """Like atomic_path for a directory (an exported SavedModel): written under a
    temporary name, then renamed onto path, replacing an older one."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".tmp-{uuid.uuid4().hex[:8]}-{path.name}"
    try:
        yield temporary
        if path.exists():
            old = path.parent / f".old-{uuid.uuid4().hex[:8]}-{path.name}"
            os.replace(path, old)
            shutil.rmtree(old)
        os.replace(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _sync_directory(directory: pathlib.Path) -> None:
    """Flushes a rename to disk (a no-op where directories cannot be opened)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def write_text(path: str | pathlib.Path, text: str) -> None:
    """Writes a text file atomically (see atomic_path)."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_json(path: str | pathlib.Path, data) -> None:
    """Writes JSON atomically: a crash leaves either the old file or the new one."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | pathlib.Path, fix: str = "restore it or remove it"):
    """Reads a JSON record; a damaged one is a one-line UserError naming the file
    and `fix`, what the user should do about it."""
    path = pathlib.Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is damaged (not valid JSON: {error}); {fix}") from None


@contextlib.contextmanager
def open_run(
    output_dir: str | pathlib.Path,
    config: dict,
    ignore: Iterable[str] = (),
    write: bool = True,
    defaults: dict | None = None,
):
    """Locks output_dir for the lifetime of the block (zskt_tf.locks), then
    prepares it (prepare_output_dir) and yields whether the run resumes.

    write=False (the non-chief workers of a multi-worker run) neither locks nor
    writes; they only check the configuration.
    """
    with locks.RunLock(output_dir, enabled=write):
        yield prepare_output_dir(output_dir, config, ignore, write, defaults)


def field_defaults(config) -> dict:
    """The default value of every field of a dataclass (instance or class)."""
    return {
        field.name: field.default
        for field in dataclasses.fields(config)
        if field.default is not dataclasses.MISSING
    }


def prepare_output_dir(
    output_dir: str | pathlib.Path,
    config: dict,
    ignore: Iterable[str] = (),
    write: bool = True,
    defaults: dict | None = None,
) -> bool:
    """Creates output_dir with config.json, or checks it holds the same run.

    Args:
        output_dir: the run directory.
        config: the run's configuration (JSON-serialisable).
        ignore: keys that may differ between a run and its resumption (paths, how
            often to log, where to stop), so they do not make it a different run.
        write: create the directory and config.json (False: only check; the
            non-chief processes of a multi-worker run).
        defaults: the configuration's default values (see field_defaults). A run
            recorded by an older version, without a key added since, is the same
            run when the key's value is its default.

    Returns:
        True if the directory already held this run (so it resumes).

    Raises:
        UserError: the directory holds a run with a different configuration.
    """
    output_dir = pathlib.Path(output_dir)
    config_path = output_dir / CONFIG_FILE
    config = json.loads(json.dumps(config))  # tuples -> lists, as read back from disk
    if config_path.exists():
        recorded = read_json(
            config_path,
            fix="restore it from a copy, or delete it and rerun with the run's "
            "original flags, which then become its configuration (checkpoints are "
            "kept)",
        )
        previous = json.loads(json.dumps(defaults or {})) | recorded
        ignore = set(ignore)
        differences = [
            f"{key}: {previous.get(key)!r} there, {config.get(key)!r} now"
            for key in sorted(set(previous) | set(config))
            if key not in ignore and previous.get(key) != config.get(key)
        ]
        if differences:
            raise UserError(
                f"{output_dir} holds a run with a different configuration "
                f"({'; '.join(differences[:3])}); use a new --output_dir, or rerun "
                "with the original flags to resume it"
            )
        return True
    if (output_dir / CHECKPOINT_SUBDIR).is_dir():
        logging.warning(
            "%s has checkpoints but no %s: taking this command's settings as the "
            "run's configuration",
            output_dir,
            CONFIG_FILE,
        )
    elif any(not _bookkeeping(path) for path in _entries(output_dir)):
        raise UserError(
            f"{output_dir} is not empty and has no {CONFIG_FILE}; choose a new "
            "--output_dir"
        )
    if write:
        write_json(config_path, config)
    return False
