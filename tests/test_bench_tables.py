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
