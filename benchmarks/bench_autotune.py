"""Default vs autotuned fp32 GEMM blocking on a few shapes, in one process.

    flock /tmp/ember-bench.lock python benchmarks/bench_autotune.py [--reps 30]

Each shape is a ``linear`` against a constant weight (x[M, K] @ W[N, K]^T). Both builds are
timed alternately (so that background load hits both alike); medians in ms. The tuner uses
a fresh cache directory unless --cache is given, so it really benchmarks here.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

SHAPES = [("512^3", 512, 512, 512), ("BERT FFN up", 128, 3072, 768), ("1024x768x3072", 1024, 768, 3072)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--cache", help="compile cache dir (default: a fresh temporary one)")
    args = ap.parse_args()
    os.environ["EMBER_CACHE_DIR"] = args.cache or tempfile.mkdtemp(prefix="ember-bench-tune-")
    import ember
    from ember.ir import Graph, TensorType, dtypes
    rng = np.random.default_rng(0)
    print(f"threads={os.cpu_count()} cache={os.environ['EMBER_CACHE_DIR']}")
    print(f"{'shape':<16}{'M':>6}{'N':>6}{'K':>6}  {'default ms':>11}{'tuned ms':>10}{'speedup':>9}  tile  (tune s)")
    for name, m, n, k in SHAPES:
        g = Graph()
        x = g.add_input("x", TensorType(dtypes.f32, (m, k)))
        g.outputs = [g.op("linear", [x, g.add_const(rng.standard_normal((n, k)).astype(np.float32), "w")])]
        xs = rng.standard_normal((m, k)).astype(np.float32)
        base = ember.compile(g, (xs,))
        t0 = time.perf_counter()
        tuned = ember.compile(g, (xs,), autotune=True)
        tune_s = time.perf_counter() - t0
        np.testing.assert_allclose(tuned(xs), base(xs), rtol=1e-4, atol=1e-3)
        tb, tt = [], []
        for _ in range(3):
            base(xs), tuned(xs)
        for _ in range(args.reps):
            t0 = time.perf_counter(); base(xs); tb.append(time.perf_counter() - t0)
            t0 = time.perf_counter(); tuned(xs); tt.append(time.perf_counter() - t0)
        mb, mt = statistics.median(tb) * 1e3, statistics.median(tt) * 1e3
        log = tuned.autotune_log[0] if tuned.autotune_log else {}
        print(f"{name:<16}{m:>6}{n:>6}{k:>6}  {mb:>11.3f}{mt:>10.3f}{mb / mt:>8.2f}x  "
              f"{log.get('tile') or 'default'}  ({tune_s:.1f})")
        for c in log.get("candidates", []):
            print(f"    candidate kc={c['tile']['kc']:<4} mc={c['tile']['mc']:<4} "
                  f"median {c['median_s'] * 1e3:8.3f} ms{'' if c['ok'] else '  MISMATCH'}")


if __name__ == "__main__":
    main()
