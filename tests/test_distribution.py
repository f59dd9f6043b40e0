"""tf.distribute: the same math on two replicas as on one device, portable
checkpoints, and a two-process multi-worker run (tests/distributed_cases.py)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import HANG_GUARD_SECONDS, REPO, tiny_teacher, user_error


def _case(*arguments):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-m", "tests.distributed_cases", *arguments],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_SECONDS,
        env=env,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _assert_same_run(one, two, loss_rtol=1e-5, weight_atol=1e-4):
    assert len(one["losses"]) == len(two["losses"]) == 3
    for single, mirrored in zip(one["losses"], two["losses"], strict=True):
        if isinstance(single, dict):
            assert single.keys() == mirrored.keys()
            single, mirrored = list(single.values()), list(mirrored.values())
        np.testing.assert_allclose(mirrored, single, rtol=loss_rtol)
    for a, b in zip(one["weights"], two["weights"], strict=True):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=0, atol=weight_atol)


@pytest.fixture(scope="module")
def games():
    """Every game of these tests, on one device and on two replicas, in one process."""
    return _case("games")


@pytest.mark.parametrize("options", ["paper", "beyond"])
def test_zero_shot_iterations_on_two_replicas_equal_one_device(games, options):
    # "beyond": the BN and balance priors, the l1 objective, the class-conditional
    # generator with the masked term and a replicated, cutmixed replay pool, all at
    # once.
    single, mirrored = games[options]["single"], games[options]["mirrored"]
    # The bounds are 1e-5 and 1e-4; in float64 they agree far closer.
    _assert_same_run(single, mirrored, loss_rtol=1e-9, weight_atol=1e-8)
    assert single["losses"][0]["train/generator_kl"] > 0
    if options == "beyond":
        assert single["losses"][-1]["train/replay_kl"] > 0


def test_teacher_steps_on_two_replicas_equal_one_device(games):
    steps = games["teacher_steps"]
    _assert_same_run(steps["single"], steps["mirrored"], 1e-9, 1e-8)


def test_checkpoint_from_two_replicas_resumes_on_one_device(tmp_path):
    root, _, teacher_dir = tiny_teacher(tmp_path)
    runs = _case("checkpoint_portability", str(teacher_dir), str(root), str(tmp_path))
    straight, stopped, resumed = runs["straight"], runs["stopped"], runs["resumed"]
    assert "iteration 2/4" in stopped["interrupted"]
    assert straight["iterations"] == resumed["iterations"] == 4
    assert straight["weights"].keys() == resumed["weights"].keys()
    for key, value in straight["weights"].items():
        np.testing.assert_allclose(
            np.array(resumed["weights"][key]), np.array(value), atol=1e-4, err_msg=key
        )
    history = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [entry["iteration"] for entry in history] == [0, 2, 4]


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_two_worker_processes_equal_one_device(games):
    ports = ",".join(str(port) for port in _free_ports(2))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.distributed_cases",
                "multi_worker",
                str(i),
                ports,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        for i in range(2)
    ]
    outputs = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=HANG_GUARD_SECONDS)
        assert worker.returncode == 0, stderr[-3000:]
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert [output["chief"] for output in outputs] == [True, False]
    single = games["paper"]["single"]
    for output in outputs:
        _assert_same_run(single, output, loss_rtol=1e-9, weight_atol=1e-8)


def test_strategy_flag_errors_are_one_line(tmp_path):
    for strategy, output, message in (
        ("gpus", "x", "strategy must be one of default, mirrored, multi_worker, tpu"),
        ("tpu", "y", "no TPU found"),
    ):
        stderr = user_error(
            "zskt-tf-distill",
            "--teacher=embedded:cifar10-wrn-16-2",
            f"--strategy={strategy}",
            f"--output_dir={tmp_path / output}",
        )
        assert message in stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
