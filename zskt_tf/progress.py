"""Progress lines with rate and ETA, through absl.logging."""

from __future__ import annotations

import time

from absl import logging


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return (
        f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
    )


class Progress:
    """Logs 'label done/total (pct) ETA extra' at most every `interval` seconds.

    The rate is measured from the first update of this process, so a resumed run's
    ETA reflects its real speed rather than the time since the original start.
    """

    def __init__(
        self,
        label: str,
        total: int,
        start: int = 0,
        interval: float = 10.0,
        stop_at: int | None = None,
    ):
        """stop_at: where this process will stop (--stop_at) if before total; the
        ETA then counts to it and says so, since a session that stops at 400 of
        80,000 iterations wants to know when it reaches 400."""
        self.label, self.total, self.interval = label, total, interval
        self.stop_at = (
            stop_at if stop_at is not None and start < stop_at < total else None
        )
        self._first, self._first_time = start, time.perf_counter()
        self._last_log = 0.0

    @property
    def end(self) -> int:
        return self.total if self.stop_at is None else self.stop_at

    def eta_seconds(self, done: int) -> float:
        elapsed = time.perf_counter() - self._first_time
        rate = (done - self._first) / elapsed if elapsed > 0 else 0.0
        return (self.end - done) / rate if rate > 0 else float("inf")

    def update(self, done: int, extra: str = "", force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_log < self.interval and done < self.end:
            return
        self._last_log = now
        eta = self.eta_seconds(done)
        eta_text = format_seconds(eta) if eta != float("inf") else "?"
        if self.stop_at is not None:
            eta_text += f" (to the stop at {self.stop_at})"
        logging.info(
            "%s %d/%d (%.1f%%) ETA %s %s",
            self.label,
            done,
            self.total,
            100.0 * done / max(self.total, 1),
            eta_text,
            extra,
        )
