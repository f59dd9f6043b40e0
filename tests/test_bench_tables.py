"""bench/beyond_paper.py's table and curves, from run histories written here."""

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO


def _history(directory, accuracies, kls):
    directory.mkdir(parents=True)
    entries = [
        {"iteration": 50 * i, "test_accuracy": a}
        | ({"generator_kl": k} if k is not None else {})
        for i, (a, k) in enumerate(zip(accuracies, kls, strict=True))
    ]
    (directory / "history.json").write_text(json.dumps(entries))


@pytest.fixture()
def table(tmp_path):
    root = tmp_path / "beyond"
    healthy = [None, 0.1, 0.1, 0.1, 0.1]
    _history(root / "t" / "paper" / "seed_0", [0.1, 0.2, 0.3, 0.4, 0.5], healthy)
    _history(root / "t" / "paper" / "seed_1", [0.1, 0.2, 0.5, 0.6, 0.7], healthy)
    # KL 0.001 at iteration 50 (after 40): collapsed; the run stopped at 100.
    _history(root / "t" / "bn" / "seed_0", [0.1, 0.1, 0.1], [None, 0.001, 0.2])
    picture = tmp_path / "curves.png"
    printed = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "beyond_paper.py"),
            "--table_only",
            "--teachers=t=unused",
            "--configs=paper,bn=--bn_prior=1,l1=--adversarial_loss=l1",
            "--seeds=0,1",
            "--report=100,200",
            "--smooth=150,200",
            f"--output_dir={root}",
            f"--plot={picture}",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    return printed, picture


def test_table_rows_are_seed_means_ranges_and_collapse_counts(table):
    printed, _ = table
    rows = {
        line.split(" | ")[1]: line for line in printed.splitlines() if "| t |" in line
    }
    assert "| mean of 150/200 | collapsed |" in printed
    # paper: at 100 (0.3, 0.5), at 200 (0.5, 0.7), smoothed (0.45, 0.65).
    assert rows["paper"] == (
        "| t | paper | 40.00 (30.00-50.00, n=2) | 60.00 (50.00-70.00, n=2) "
        "| 55.00 (45.00-65.00, n=2) | 0 / 2 |"
    )
    assert rows["bn"] == "| t | bn | 10.00 (10.00-10.00, n=1) | - | - | 1 / 1 |"
    assert rows["l1"] == "| t | l1 | - | - | - | 0 / 0 |"


def test_curves_are_drawn(table):
    _, picture = table
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _seed_run(directory, accuracies, finished=True):
    """A zskt-tf-distill seed directory: history.json every 100 iterations, and
    results.json once the run has finished."""
    directory.mkdir(parents=True)
    entries = [
        {"iteration": 100 * i, "test_accuracy": a} for i, a in enumerate(accuracies)
    ]
    (directory / "history.json").write_text(json.dumps(entries))
    if finished:
        (directory / "results.json").write_text(json.dumps({"test_accuracy": 0}))


def _paired(*args):
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / "paired_seeds.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
    )


def test_paired_seeds_reproduces_the_recorded_nine_seed_statistics(tmp_path):
    # docs/RESULTS.md, the TV prior on Fashion-MNIST over nine seeds in three
    # sessions: mean +4.22, standard error 1.20, t 3.52 on 8 df, p 0.008, Wilcoxon
    # 0.016. Seeds 0-4 and 5-8 of B live in two directories, as sessions leave them.
    changes = [7.27, -3.94, 6.51, 5.79, 5.44, 0.81, 5.98, 6.17, 3.94]
    for seed, change in enumerate(changes):
        _seed_run(tmp_path / "a" / f"seed_{seed}", [0.1, 0.70])
        session = "b1" if seed < 5 else "b2"
        _seed_run(tmp_path / session / f"seed_{seed}", [0.1, (70 + change) / 100])
    _seed_run(tmp_path / "a" / "seed_9", [0.1, 0.5], finished=False)
    result = _paired(
        f"--a={tmp_path / 'a'}", f"--b={tmp_path / 'b1'},{tmp_path / 'b2'}"
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "| 1 | 70.00 | 66.06 | -3.94 |" in out
    assert "| mean (range) | 70.00 (70.00-70.00) | 74.22 (66.06-77.27) | +4.22 |" in out
    assert (
        "B ahead on 8 of 9 seeds; mean change +4.22, standard error 1.20, paired t "
        "3.52 on 8 df (p = 0.008 two-sided); Wilcoxon signed-rank p = 0.016"
    ) in out
    assert "left out of A (not finished or not evaluated there): [9]" in out
    # --at takes the evaluation at that iteration, finished or not.
    early = _paired(f"--a={tmp_path / 'a'}", f"--b={tmp_path / 'b1'}", "--at=0")
    assert "| mean (range) | 10.00 (10.00-10.00) | 10.00 (10.00-10.00) | +0.00 |" in (
        early.stdout
    )
    assert "unpaired seeds, left out: [5, 6, 7, 8, 9]" in early.stdout


def test_paired_seeds_p_values_meet_the_tables():
    # The two-sided 5% points of Student's t (1, 5 and 8 df) and the smallest exact
    # signed-rank p for 5 pairs (all up: 2 / 2**5).
    script = (
        "from bench.paired_seeds import t_two_sided_p, signed_rank_p\n"
        "print([round(t_two_sided_p(t, df), 4) for t, df in "
        "((12.706, 1), (2.571, 5), (2.306, 8), (0.0, 3))])\n"
        "print(signed_rank_p([1, 2, 3, 4, 5]), signed_rank_p([1, -1, 2, -2]))\n"
        # Against every sign pattern counted by brute force, ties and zeros included.
        "import itertools, numpy as np\n"
        "rng = np.random.default_rng(0)\n"
        "for _ in range(50):\n"
        "    d = np.round(rng.normal(0.5, 1, rng.integers(1, 9)))\n"
        "    d = d[d != 0]; m = np.abs(d)\n"
        "    r = np.array([1 + np.sum(m < x) + (np.sum(m == x) - 1) / 2 for x in m])\n"
        "    o = abs(r[d > 0].sum() - r.sum() / 2)\n"
        "    n = sum(abs(np.dot(s, r) - r.sum() / 2) >= o - 1e-9\n"
        "            for s in itertools.product((0, 1), repeat=len(d)))\n"
        "    assert abs(signed_rank_p(d) - n / 2 ** len(d)) < 1e-12\n"
        "print('enumeration agrees')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO
    )
    assert out.stdout.split("\n")[:3] == [
        "[0.05, 0.05, 0.05, 1.0]",
        "0.0625 1.0",
        "enumeration agrees",
    ], out.stderr


def test_paired_seeds_refuses_what_it_cannot_pair(tmp_path):
    _seed_run(tmp_path / "a" / "seed_0", [0.1, 0.7])
    _seed_run(tmp_path / "b" / "seed_1", [0.1, 0.7])
    (tmp_path / "empty").mkdir()
    no_common = _paired(f"--a={tmp_path / 'a'}", f"--b={tmp_path / 'b'}")
    assert no_common.returncode == 1
    assert no_common.stderr.strip() == "error: the two settings have no seed in common"
    empty = _paired(f"--a={tmp_path / 'a'}", f"--b={tmp_path / 'empty'}")
    assert (
        empty.stderr.strip()
        == f"error: {tmp_path / 'empty'} has no seed_<s> run directories"
    )
