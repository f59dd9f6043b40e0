"""Progress lines: the ETA counts to where this process stops."""

import pytest

from zskt_tf import progress


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock_and_lines(monkeypatch):
    clock, lines = _Clock(), []
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    monkeypatch.setattr(
        progress.logging, "info", lambda fmt, *args: lines.append(fmt % args)
    )
    return clock, lines


def test_eta_counts_to_the_end_of_the_schedule(clock_and_lines):
    clock, lines = clock_and_lines
    bar = progress.Progress("iteration", 1000, start=0)
    clock.now += 20.0  # 10 iterations in 20 s: 2 s each
    bar.update(10)
    assert bar.eta_seconds(10) == pytest.approx(990 * 2.0)
    assert lines == ["iteration 10/1000 (1.0%) ETA 33:00 "]


def test_eta_counts_to_stop_at_and_says_so(clock_and_lines):
    clock, lines = clock_and_lines
    bar = progress.Progress("iteration", 80000, start=100, stop_at=400)
    clock.now += 50.0  # 100 -> 125 in 50 s: 2 s each, 275 left to the stop
    bar.update(125, "loss 0.5")
    assert lines == [
        "iteration 125/80000 (0.2%) ETA 9:10 (to the stop at 400) loss 0.5"
    ]


def test_the_stop_is_always_logged(clock_and_lines):
    clock, lines = clock_and_lines
    bar = progress.Progress("iteration", 80000, stop_at=3, interval=1e9)
    for done in (1, 2, 3):
        clock.now += 1.0
        bar.update(done)
    # Within the interval nothing is logged, except the update that reaches the stop.
    assert [line.split(" ")[1] for line in lines] == ["3/80000"]


@pytest.mark.parametrize("stop_at", [None, 50, 1000, 5000])
def test_a_stop_outside_the_run_is_ignored(clock_and_lines, stop_at):
    clock, lines = clock_and_lines
    bar = progress.Progress("epoch", 1000, start=50, stop_at=stop_at)
    assert bar.stop_at is None and bar.end == 1000
    clock.now += 10.0
    bar.update(60)
    assert "stop" not in lines[0]
