"""The pass manager: an ordered list of named graph passes, timed, dumped and verified.

A pass is a function ``Graph -> Graph`` (it may change the graph in place and return it);
if it takes a ``log`` argument it appends a line per rewrite it makes. In verify mode
(``verify=True`` or ``EMBER_VERIFY=1``) the graph is run on the reference interpreter before
the first pass and after every pass, on the same inputs; the first pass whose result moves
beyond tolerance is named in a ``VerificationError`` with the rewrites it made.
"""
from __future__ import annotations

import inspect
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import VerificationError
from ..ir import dtypes, interpret, verify as verify_ir
from ..ir.symbolic import evaluate

RTOL, ATOL = 1e-4, 1e-5


@dataclass
class PassRecord:
    name: str
    seconds: float
    nodes_before: int
    nodes_after: int
    rewrites: list[str] = field(default_factory=list)
    max_error: float | None = None  # verify mode: largest relative change vs the reference


@dataclass
class PassManager:
    passes: list[tuple[str, Callable]]
    dump_after: set[str] = field(default_factory=set)   # pass names whose result is printed
    check: bool = True                                  # run the IR verifier after each pass
    verify: bool | None = None                          # translation validation (None: $EMBER_VERIFY)
    example_inputs: list | None = None                  # numpy inputs for verify mode
    records: list[PassRecord] = field(default_factory=list)
    dumps: dict[str, str] = field(default_factory=dict)

    def run(self, g):
        check_results = self.verify if self.verify is not None else os.environ.get("EMBER_VERIFY") == "1"
        inputs = want = None
        if check_results and self.passes:
            inputs = self.example_inputs or random_inputs(g)
            want = interpret(g, inputs)
        for name, fn in self.passes:
            before = len(g.nodes)
            log: list[str] = []
            t0 = time.perf_counter()
            g = fn(g, log=log) if "log" in inspect.signature(fn).parameters else fn(g)
            rec = PassRecord(name, time.perf_counter() - t0, before, len(g.nodes), log)
            self.records.append(rec)
            if self.check:
                verify_ir(g)
            if want is not None:
                rec.max_error = compare(name, want, interpret(g, inputs), log,
                                        getattr(fn, "verify_outliers", 0.0))
            if name in self.dump_after or "all" in self.dump_after:
                self.dumps[name] = str(g)
        return g

    def report(self) -> str:
        rows = []
        for r in self.records:
            err = "" if r.max_error is None else f"  verified (max rel err {r.max_error:.1e})"
            rows.append(f"{r.name:<18} {r.seconds * 1e3:8.2f} ms  nodes {r.nodes_before:>4} -> "
                        f"{r.nodes_after:<4} rewrites {len(r.rewrites)}{err}")
        return "\n".join(rows)


def compare(pass_name, want, got, log, outliers: float = 0.0) -> float:
    """The largest relative change from ``want`` to ``got``; VerificationError beyond RTOL.

    ``outliers``: the fraction of float elements a pass may move further than RTOL (a pass
    that moves integer arithmetic to where rounding ties can fall the other way, e.g. one
    quantization step after a requantize, declares it as ``fn.verify_outliers``)."""
    worst = 0.0
    for k, (w, o) in enumerate(zip(want, got)):
        if w.shape != o.shape or w.dtype != o.dtype:
            raise VerificationError(f"pass {pass_name!r} changed output {k} from {w.dtype}{list(w.shape)} "
                                    f"to {o.dtype}{list(o.shape)}")
        if not dtypes.np_is_float(w.dtype):
            bad = int(np.sum(w != o))
            if bad and bad > outliers * w.size:
                raise VerificationError(f"pass {pass_name!r} changed {bad} element(s) of output {k}"
                                        + _rewrites(log))
            continue
        w64, o64 = w.astype(np.float64), o.astype(np.float64)
        if not np.array_equal(np.isnan(w64), np.isnan(o64)):
            raise VerificationError(f"pass {pass_name!r} changed where output {k} is NaN" + _rewrites(log))
        ok = ~np.isnan(w64)
        diff = np.abs(w64[ok] - o64[ok])
        scale = np.abs(w64[ok]) if diff.size else diff
        off = ~((diff <= ATOL + RTOL * scale) | (w64[ok] == o64[ok])) if diff.size else diff.astype(bool)
        if off.any() and off.mean() > outliers:
            err = float(np.max(diff / (np.abs(w64[ok]) + ATOL)))
            raise VerificationError(f"pass {pass_name!r} changed output {k}: max relative error {err:.2e} "
                                    f"> {RTOL:.0e}" + _rewrites(log))
        if diff.size:
            finite = np.isfinite(diff)
            worst = max(worst, float(np.max(diff[finite] / (np.abs(w64[ok][finite]) + ATOL), initial=0.0)))
    return worst


def _rewrites(log) -> str:
    if not log:
        return ""
    shown = "\n  ".join(log[:20])
    return f"\nrewrites it made:\n  {shown}" + ("\n  ..." if len(log) > 20 else "")


def random_inputs(g, size: int = 3, seed: int = 0) -> list[np.ndarray]:
    """Inputs for a graph: symbols bound to ``size`` (within their ranges), values drawn at
    random (floats normal, integers 0 or 1 so they are valid indices and masks)."""
    rng = np.random.default_rng(seed)
    env = {}
    for s in g.symbols:
        lo, hi = g.sym_ranges.get(s, (1, 2**31 - 1))
        env[s] = min(max(size, lo), hi)
    out = []
    for v in g.inputs:
        shape = tuple(evaluate(d, env) for d in v.shape)
        dt = v.dtype.np
        if dtypes.np_is_float(dt):
            out.append(rng.standard_normal(shape).astype(dt))
        elif dt.kind == "b":
            out.append(rng.random(shape) < 0.5)
        else:
            out.append(rng.integers(0, 2, size=shape).astype(dt))
    return out
