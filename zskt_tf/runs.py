"""Output directories: atomic JSON files and the one-run-per-directory rule."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import tempfile
from collections.abc import Iterable

from zskt_tf.errors import UserError

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"


def write_json(path: str | pathlib.Path, data) -> None:
    """Writes JSON atomically: a crash leaves either the old file or the new one."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(data, file, indent=2, sort_keys=True)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise


def read_json(path: str | pathlib.Path):
    path = pathlib.Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found") from None
    except json.JSONDecodeError as error:
        raise UserError(
            f"{path} is not valid JSON ({error}); restore or remove it"
        ) from None


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
        previous = json.loads(json.dumps(defaults or {})) | read_json(config_path)
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
    if output_dir.exists() and any(output_dir.iterdir()):
        raise UserError(
            f"{output_dir} is not empty and has no {CONFIG_FILE}; choose a new "
            "--output_dir"
        )
    if write:
        write_json(config_path, config)
    return False
