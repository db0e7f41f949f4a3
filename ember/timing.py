"""Interleaved timing: every contender runs once per round, medians over many rounds.

Interleaving keeps a noisy, shared machine fair: a slow moment hits every contender alike.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable


def measure(contenders: dict[str, Callable[[], object]], rounds: int = 200, warmup: int = 5,
            max_seconds: float = 10.0) -> dict[str, dict]:
    """Median / p10 / p90 seconds per call for each contender, measured interleaved."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in contenders}
    start = time.perf_counter()
    for r in range(rounds):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
        if r >= 10 and time.perf_counter() - start > max_seconds:
            break
    out = {}
    for name, s in samples.items():
        s.sort()
        out[name] = {"median": statistics.median(s), "p10": s[len(s) // 10],
                     "p90": s[(len(s) * 9) // 10], "runs": len(s)}
    return out


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"
