"""Shared helpers for the benchmark scripts: medians of interleaved repeats, and appending a report to a file."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable


def median_ms(fns: dict[str, Callable[[], object]], repeats: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median wall time (ms) of each callable, measured round-robin so drift hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def append_report(out: Path | None, text: str) -> None:
    """Append ``text`` (and a blank line) to ``out`` when given: reruns add to a results file, never replace it."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(text.rstrip("\n") + "\n\n")
