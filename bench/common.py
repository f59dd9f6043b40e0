"""Benchmark helpers: timing and peak resident memory of a code section."""

import contextlib
import os
import threading
import time


def _rss_bytes() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def peak_memory(result: dict, interval: float = 0.05):
    """Samples this process's RSS while the block runs; stores the peak in MiB."""
    peak = [_rss_bytes()]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        result["peak_rss_mib"] = round(max(peak[0], _rss_bytes()) / 2**20)


def time_per_call(fn, calls: int, warmup: int = 1) -> float:
    """Seconds per call of fn() after warm-up calls (tracing, first allocations)."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls
