"""One run per output directory: a lock held for the run's lifetime.

The lock is an exclusive flock(2) on <output_dir>/.lock, which records the holder
(host, process id, start time) for the message a second run prints. The kernel
drops a flock when its process dies, however it dies (kill -9 included), so a
lock left behind never blocks: the next run takes it over and says whose it was.
flock is reliable on local disks; on network or FUSE-mounted folders (NFS, SMB,
Google Drive) it may not exclude a run on another machine (README, "Runs that
survive").
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import pathlib
import socket

from absl import logging

from zskt_tf.errors import UserError

LOCK_FILE = ".lock"

# Directories this process holds: a second run of the same directory from the same
# process (a notebook cell run twice, a thread) is refused like another process's.
_HELD: set[pathlib.Path] = set()


def _describe(holder: dict) -> str:
    return (
        f"host {holder.get('host', '?')}, process {holder.get('pid', '?')}, "
        f"started {holder.get('started', '?')}"
    )


def _read_holder(handle: int) -> dict:
    os.lseek(handle, 0, os.SEEK_SET)
    text = os.read(handle, 4096).decode("utf-8", "replace").strip()
    try:
        holder = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {"host": "unknown (unreadable lock file)"}
    return holder if isinstance(holder, dict) else {}


class RunLock:
    """Holds <directory>/.lock from acquire() (or `with`) until release().

    Args:
        directory: the run's output directory (created if missing).
        enabled: False makes the lock a no-op (the non-chief workers of a
            multi-worker run, which write nothing there).

    Raises (acquire):
        UserError: another live run holds the directory; the message names it.
    """

    def __init__(self, directory: str | pathlib.Path, enabled: bool = True):
        self.directory = pathlib.Path(directory).resolve()
        self.enabled = enabled
        self._handle: int | None = None

    def acquire(self) -> RunLock:
        if not self.enabled:
            return self
        busy = (
            f"{self.directory} is in use by another run "
            "({}); wait for it to finish or stop it, or choose another --output_dir"
        )
        if self.directory in _HELD:
            raise UserError(busy.format(f"this process, {_describe(self.holder())}"))
        self.directory.mkdir(parents=True, exist_ok=True)
        handle = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(handle)
            os.close(handle)
            raise UserError(busy.format(_describe(holder))) from None
        except OSError as error:  # a filesystem without locks
            os.close(handle)
            logging.warning(
                "cannot lock %s (%s): running without protection against a second "
                "run in the same directory",
                self.directory,
                error.strerror,
            )
            return self
        previous = _read_holder(handle)
        if previous:
            logging.warning(
                "taking over the lock of %s left by a run that no longer exists (%s)",
                self.directory,
                _describe(previous),
            )
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.timezone.utc).strftime(
                "%Y-%m-%d %H:%M:%S UTC"
            ),
        }
        try:
            os.ftruncate(handle, 0)
            os.pwrite(handle, (json.dumps(record) + "\n").encode(), 0)
            os.fsync(handle)
        except OSError as error:
            os.close(handle)  # drops the lock
            raise UserError(
                f"cannot write {self.directory / LOCK_FILE} ({error.strerror}); "
                "free some disk space and rerun the same command"
            ) from None
        self._handle = handle
        _HELD.add(self.directory)
        return self

    def holder(self) -> dict:
        """The record of the process holding the lock ({} if none)."""
        path = self.directory / LOCK_FILE
        if not path.is_file():
            return {}
        handle = os.open(path, os.O_RDONLY)
        try:
            return _read_holder(handle)
        finally:
            os.close(handle)

    def release(self) -> None:
        if self._handle is None:
            return
        # Emptied, not deleted: a process that opened the file just before a delete
        # would lock a file no other run can see.
        os.ftruncate(self._handle, 0)
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        os.close(self._handle)
        self._handle = None
        _HELD.discard(self.directory)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> bool:
        self.release()
        return False
