"""Faults a run must survive: damaged checkpoints and records, a second run into the
same directory, a stale lock, a full disk. Each asserts the one-line message and that
the resumed run ends exactly where an undisturbed one does."""

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import (
    HANG_GUARD_SECONDS,
    run_program,
    start_program,
    tiny_distill_config,
    tiny_teacher,
    user_error,
    weights_arrays,
)
from zskt_tf import checkpoints, distill, locks, runs
from zskt_tf.errors import UserError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_teacher(tmp_path_factory.mktemp("reliability"))


def _config(tiny, out, **overrides):
    values = dict(total_iterations=4, student_steps=2, eval_every=2, checkpoint_every=1)
    return tiny_distill_config(tiny, out, **(values | overrides))


def _flags(tiny, tmp_path, out, **overrides) -> list[str]:
    """zskt-tf-distill's flags for one seed (0) of a tiny run into out."""
    root, _, teacher_dir = tiny
    values = dict(
        teacher=teacher_dir,
        dataset="folder",
        data_dir=root,
        cache_dir=tmp_path / "cache",
        student_depth=10,
        batch_size=8,
        z_dim=16,
        n_s=1,
        eval_every=2,
        checkpoint_every=1,
        seeds=0,
        output_dir=out,
    )
    return [f"--{key}={value}" for key, value in (values | overrides).items()]


@pytest.fixture(scope="module")
def runs_2_of_4(tiny, tmp_path_factory):
    """An undisturbed 4-iteration run, and the same run stopped at 2 (checkpoints 1
    and 2 on disk), which each test copies and damages."""
    _, data, _ = tiny
    base = tmp_path_factory.mktemp("runs")
    straight = distill.distill_one_seed(_config(tiny, base / "straight"), data)
    with pytest.raises(checkpoints.StoppedAt):
        distill.distill_one_seed(_config(tiny, base / "stopped", stop_at=2), data)
    return base, straight


def _damaged_copy(runs_2_of_4, tmp_path, damage):
    base, _ = runs_2_of_4
    out = tmp_path / "run"
    shutil.copytree(base / "stopped", out)
    damage(out / "checkpoints")
    return out


def _assert_equals_undisturbed(runs_2_of_4, out, resumed):
    base, straight = runs_2_of_4
    assert resumed["iterations"] == 4
    assert resumed["history"] == straight["history"]
    expected = weights_arrays(base / "straight" / "student.weights.h5")
    actual = weights_arrays(out / "student.weights.h5")
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


def _truncate(directory):
    data = directory / "ckpt-2.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])


def _remove_index(directory):
    (directory / "ckpt-2.index").unlink()


def _garbage(directory):
    data = directory / "ckpt-2.data-00000-of-00001"
    content = bytearray(data.read_bytes())
    content[100:4100] = os.urandom(4000)
    data.write_bytes(bytes(content))


def test_a_damaged_checkpoint_is_set_aside_and_the_one_before_resumes(
    tiny, runs_2_of_4, tmp_path, caplog
):
    _, data, _ = tiny
    out = _damaged_copy(runs_2_of_4, tmp_path, _truncate)
    resumed = distill.distill_one_seed(_config(tiny, out), data)
    warnings = [r.getMessage() for r in caplog.records if "cannot be read" in r.message]
    assert len(warnings) == 1 and "checkpoint ckpt-2 cannot be read" in warnings[0]
    assert "\n" not in warnings[0]
    # Moved aside, not deleted; the run went on from ckpt-1 to the same end, and
    # the manager kept its usual last two.
    assert list((out / "checkpoints" / "damaged").glob("ckpt-2.*"))
    kept = sorted(p.name for p in (out / "checkpoints").glob("ckpt-*.index"))
    assert kept == ["ckpt-3.index", "ckpt-4.index"]
    _assert_equals_undisturbed(runs_2_of_4, out, resumed)


@pytest.mark.parametrize("damage", [_truncate, _remove_index, _garbage])
def test_every_kind_of_damage_is_found_and_set_aside(
    runs_2_of_4, tmp_path, damage, caplog
):
    # The fallback the run above goes through, on its own: ckpt-2 damaged in each
    # way is named, moved aside, and ckpt-1 is the one resumed from.
    out = _damaged_copy(runs_2_of_4, tmp_path, damage)
    _, prefix = checkpoints.resume({}, out)
    assert prefix == out / "checkpoints" / "ckpt-1"
    warnings = [r.getMessage() for r in caplog.records if "cannot be read" in r.message]
    assert len(warnings) == 1 and "checkpoint ckpt-2 cannot be read" in warnings[0]
    assert "\n" not in warnings[0]
    assert list((out / "checkpoints" / "damaged").glob("ckpt-2.*"))
    assert not list((out / "checkpoints").glob("ckpt-2.*"))
    state = tf.train.get_checkpoint_state(str(out / "checkpoints"))
    assert state.model_checkpoint_path.endswith("ckpt-1")


def test_no_readable_checkpoint_stops_until_told_to_restart(
    tiny, runs_2_of_4, tmp_path
):
    _, data, _ = tiny

    def both(directory):
        _truncate(directory)
        (directory / "ckpt-1.index").write_bytes(b"not an index")
        (directory / "checkpoint").write_text("garbage {")

    out = _damaged_copy(runs_2_of_4, tmp_path, both)
    # _config's run as flags; the run directory is <output_dir>/seed_0.
    command = _flags(tiny, tmp_path, tmp_path / "top", total_iterations=4, n_s=2)
    runs.write_json(
        tmp_path / "top" / "config.json",
        dataclasses.asdict(_config(tiny, tmp_path / "top"))
        | {"seeds": [0], "kind": "zero_shot_seeds"},
    )
    out = out.rename(tmp_path / "top" / "seed_0")
    stderr = user_error("zskt-tf-distill", *command)
    error_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert "no readable checkpoint" in error_lines[0]
    assert "--restart" in error_lines[0]
    assert sorted(p.name for p in (out / "checkpoints" / "damaged").iterdir()) == [
        "ckpt-1.data-00000-of-00001",
        "ckpt-1.index",
        "ckpt-2.data-00000-of-00001",
        "ckpt-2.index",
    ]
    # Told to, it starts again from the beginning and ends like an undisturbed run.
    restarted = distill.distill_one_seed(_config(tiny, out, restart=True), data)
    _assert_equals_undisturbed(runs_2_of_4, out, restarted)


def test_a_second_run_into_the_same_directory_exits_and_a_dead_ones_lock_is_taken(
    tiny, tmp_path
):
    command = _flags(
        tiny, tmp_path, tmp_path / "run", total_iterations=100000, eval_every=50000
    )
    first = start_program("zskt-tf-distill", *command)
    lock = tmp_path / "run" / "seed_0" / locks.LOCK_FILE
    try:
        deadline = time.time() + HANG_GUARD_SECONDS
        while not (lock.is_file() and lock.read_text().strip()):
            assert first.poll() is None, first.stdout.read()
            assert time.time() < deadline, "the first run never took its lock"
            time.sleep(0.5)
        # A second process with the same command exits at once, naming the first.
        stderr = user_error("zskt-tf-distill", *command)
        error = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and "is in use by another run" in error[0]
        assert f"process {first.pid}" in error[0], error[0]
        while not list((tmp_path / "run" / "seed_0" / "checkpoints").glob("*.index")):
            time.sleep(0.5)
    finally:
        first.send_signal(signal.SIGKILL)  # dies holding the lock, as a crash would
        first.wait()
    assert str(first.pid) in lock.read_text()  # the record is left behind
    # The same command again: the dead run's lock is taken over, its run resumed.
    resumed = run_program("zskt-tf-distill", *command, "--stop_at=3", check=False)
    assert resumed.returncode == 130, resumed.stderr[-2000:]
    assert "taking over the lock" in resumed.stderr
    assert f"process {first.pid}" in resumed.stderr
    assert lock.read_text() == ""  # released at the end


def test_the_same_directory_twice_in_one_process_is_refused(tmp_path):
    with locks.RunLock(tmp_path / "run"):
        with pytest.raises(UserError, match="in use by another run .*this process"):
            locks.RunLock(tmp_path / "run").acquire()
    with locks.RunLock(tmp_path / "run"):  # released: free again
        pass


def test_a_full_disk_during_any_write_is_one_line_and_the_run_resumes(
    tiny, runs_2_of_4, tmp_path, monkeypatch
):
    _, data, _ = tiny
    out = tmp_path / "run"
    shutil.copytree(runs_2_of_4[0] / "stopped", out)
    save = tf.train.CheckpointManager.save

    def disk_full_at_3(manager, checkpoint_number=None, **kwargs):
        if checkpoint_number == 3:
            # What TensorFlow leaves when the disk fills mid-save: a partial shard
            # in its scratch directory, then an error.
            scratch = out / "checkpoints" / "ckpt-3_temp"
            scratch.mkdir()
            (scratch / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x")
            raise tf.errors.ResourceExhaustedError(
                None, None, "ckpt-3_temp; No space left on device"
            )
        return save(manager, checkpoint_number=checkpoint_number, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", disk_full_at_3)
    with pytest.raises(UserError) as error:
        distill.distill_one_seed(_config(tiny, out), data)
    message = str(error.value)
    assert "\n" not in message and "cannot write checkpoint 3" in message
    assert "ckpt-2) is intact: free some disk space" in message
    monkeypatch.undo()
    # Rerun, and the disk fills again, now for a record (history.json) after
    # checkpoint 3 was written.
    write_json = runs.write_json

    def no_space_for_history(path, value):
        if str(path).endswith("history.json"):
            raise OSError(28, "No space left on device", str(path))
        write_json(path, value)

    monkeypatch.setattr(runs, "write_json", no_space_for_history)
    with pytest.raises(
        UserError,
        match="no space left on device .*history.json.*"
        "the last checkpoint .*ckpt-3.* is intact",
    ):
        distill.distill_one_seed(_config(tiny, out), data)
    assert not list((out / "checkpoints").glob("*_temp"))
    monkeypatch.undo()
    resumed = distill.distill_one_seed(_config(tiny, out), data)
    _assert_equals_undisturbed(runs_2_of_4, out, resumed)


def _can_mount_tmpfs(path) -> bool:
    path.mkdir()
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(path)],
            capture_output=True,
        ).returncode
        == 0
    )


def test_a_real_full_disk_ends_the_run_with_one_line_and_it_resumes(
    tiny, runs_2_of_4, tmp_path
):
    """On a small tmpfs with less room left than a checkpoint takes: the kernel's
    own ENOSPC, mid-way through writing checkpoint 3."""
    _, data, _ = tiny
    disk = tmp_path / "disk"
    if not _can_mount_tmpfs(disk):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = disk / "run"
        shutil.copytree(runs_2_of_4[0] / "stopped", out, ignore=_only_checkpoints)
        filler = disk / "filler"
        with open(filler, "wb") as file:
            try:
                while True:
                    file.write(b"\0" * 65536)
                    file.flush()
            except OSError:
                pass
        # Room for the small records, not for a 4 MB checkpoint.
        os.truncate(filler, filler.stat().st_size - 600_000)
        with pytest.raises(UserError) as error:
            distill.distill_one_seed(_config(tiny, out), data)
        message = str(error.value)
        assert "\n" not in message and "cannot write checkpoint 3" in message
        assert "No space left on device" in message
        assert "ckpt-2) is intact: free some disk space" in message
        filler.unlink()
        resumed = distill.distill_one_seed(_config(tiny, out), data)
        _assert_equals_undisturbed(runs_2_of_4, out, resumed)
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def _only_checkpoints(directory, names):
    """Copies what a resume needs (the logs would not fit on the small disk)."""
    del directory
    return [name for name in names if name in ("logs", "samples.png", "accuracy.png")]


def test_damaged_records_name_the_file_and_the_fix(tiny, tmp_path, caplog):
    summary = tmp_path / "summary"
    config = dataclasses.replace(
        _config(tiny, summary, total_iterations=2),
        data_dir=str(tiny[0]),
        cache_dir=str(tmp_path / "c"),
    )
    distill.distill(config)
    results = summary / "seed_0" / "results.json"
    seed_config = summary / "seed_0" / "config.json"
    finished = json.loads(results.read_text())
    results.write_text(results.read_text()[:40])
    with pytest.raises(
        UserError,
        match=r"seed_0/results.json is damaged \(not valid JSON.*delete it and rerun "
        "the same command",
    ):
        distill.distill(config)
    results.unlink()  # as told: the run rewrites it from its last checkpoint
    summary_results = distill.distill(config)
    rewritten = runs.read_json(results)
    assert rewritten["history"] == finished["history"]
    assert summary_results["seeds"]["0"] == finished["test_accuracy"]
    seed_config.write_text(seed_config.read_text()[:50])  # beside a results.json
    with pytest.raises(UserError, match=r"seed_0/config.json is damaged .*restore it"):
        distill.distill(config)
    # Another seed's call into the directory trains, and leaves the damaged seed out
    # of its summary with the same message rather than failing or trusting it.
    caplog.set_level(logging.WARNING)
    other = distill.distill(config, seeds=(1,))
    assert list(other["seeds"]) == ["1"]
    assert any(
        "left out of the summary" in m and "seed_0/config.json is damaged" in m
        for m in caplog.messages
    ), caplog.messages


def test_seed_runs_are_found_by_the_names_runs_write(tmp_path):
    for name in ("seed_10", "seed_2", "seed_007", "seed_x", "seed_", "notes"):
        (tmp_path / name).mkdir()
    # A folder a run would not name (seed_007 is not seed 7) is not a seed's run,
    # and seeds come in numeric order (2 before 10).
    assert runs.seed_dirs(tmp_path) == {
        2: tmp_path / "seed_2",
        10: tmp_path / "seed_10",
    }
    assert runs.seed_dir(tmp_path, 7) == tmp_path / "seed_7"
    assert runs.seed_dirs(tmp_path / "missing") == {}
