"""A small autotuner for the fp32 GEMM's blocking (opt-in: ``ember.compile(autotune=True)``
or ``EMBER_AUTOTUNE=1``).

For each Matmul against a packed constant weight (static N and K; M may be symbolic and is
tuned at a representative value, the example input's or ``DEFAULT_M``, rounded up to a power
of two), one standalone C program holds the GEMM printed once per candidate tile
(``Matmul.tile``: K block "kc", rows per task "mc"). It is compiled once with the toolchain's
flags and run: random operands, OpenMP on the model's thread count, a warm-up call per
candidate, then rounds of one timed call per candidate (so that a burst of other load hits
all of them alike), and each candidate's median. Every candidate's result is checked against
the default blocking's; the fastest candidate that agrees wins if it beats the default by
``MIN_GAIN``. When the default wins the kernel keeps ``tile = None`` and its C is exactly
the untuned C.

Decisions are cached in ``<compile cache>/autotune.json``, keyed by CPU, threads, M bucket,
N and K, so a shape is benchmarked once per machine. The chosen tile is printed into the
generated C, so it is part of the shared library's cache key.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

from ...errors import CompileError
from ...ir.symbolic import evaluate, free_symbols, is_symbolic, prod
from ...lower.loop_ir import Matmul, Program
from ...lower.packing import ImageOperand
from ...runtime import cache
from . import gemm, toolchain

DEFAULT_M = 128          # rows to tune at when M is symbolic and no example says otherwise
M_MIN, M_MAX = 8, 4096   # M bucket range (M below 8 is mostly the GEMV or one row task)
KC_CHOICES = (256, 512, 1024)
MC_CHOICES = (48, 96, 192)
REPS = 15                # timed calls per candidate (fewer when a call is slow, at least 3)
BUDGET_S = 0.3           # about this much timing per candidate
CACHE_FILE = "autotune.json"
MIN_GAIN = 1.03          # a tile must beat the default by 3% (timings are noisy) to replace it

stats = {"bench_runs": 0, "cache_hits": 0}  # observed by tests


def default_tile() -> dict:
    return {"kc": gemm.KC_PACKED, "mc": gemm.MC_PACKED}


def candidates(kc=KC_CHOICES, mc=MC_CHOICES) -> list[dict]:
    """The default tile first, then the grid (without repeating the default)."""
    out = [default_tile()]
    out += [{"kc": a, "mc": b} for a in kc for b in mc if {"kc": a, "mc": b} != out[0]]
    return out


def m_bucket(m: int) -> int:
    b = 1
    while b < m:
        b *= 2
    return max(M_MIN, min(M_MAX, b))


def tunable(k) -> bool:
    """A float32 GEMM against a packed constant weight with static N, K and batch."""
    return (isinstance(k, Matmul) and gemm.supports(k) and bool(getattr(k.b, "packed", 0))
            and not isinstance(k.b, ImageOperand) and k.out.dtype is k.a.buf.dtype
            and not is_symbolic(k.N) and not is_symbolic(k.K) and not is_symbolic(prod(k.batch)))


def _cache_path() -> Path:
    return cache.cache_dir() / CACHE_FILE


def _load_cache() -> dict:
    try:
        return json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _save_decision(key: str, rec: dict) -> None:
    data = _load_cache()  # re-read: another process may have added entries meanwhile
    data[key] = rec
    cache.atomic_write(_cache_path(), json.dumps(data, indent=1, sort_keys=True).encode())


def cache_key(threads: int, mb: int, n: int, k: int, nbatch: int = 1) -> str:
    cpu = cache.key(toolchain.cpu_id())[:16]
    return f"cpu={cpu} threads={threads} m={mb} n={n} k={k} batch={nbatch}"


# -- the benchmark program

_MAIN = r"""
#include <stdio.h>
#include <time.h>
#include <omp.h>
static double ember_now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static int ember_cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }
#define NCAND %(ncand)d
int main(void) {
  omp_set_num_threads(%(threads)d);
  const int64_t na = %(na)s, nb = %(nb)s, nc = %(nc)s;
  float *A = aligned_alloc(64, sizeof(float) * (na + 16)), *B = aligned_alloc(64, sizeof(float) * (nb + 16));
  float *C = aligned_alloc(64, sizeof(float) * (nc + 16)), *R = aligned_alloc(64, sizeof(float) * (nc + 16));
  uint32_t s = 12345u;
  for (int64_t i = 0; i < na; i++) { s = s * 1664525u + 1013904223u; A[i] = (float)(s >> 8) / 16777216.0f - 0.5f; }
  for (int64_t i = 0; i < nb; i++) { s = s * 1664525u + 1013904223u; B[i] = (float)(s >> 8) / 16777216.0f - 0.5f; }
  double err[NCAND], ref = 0, one = 0;
  for (int c = 0; c < NCAND; c++) {  /* warm-up, and each candidate's result against the default's */
    for (int64_t i = 0; i < nc; i++) C[i] = NAN;
    double t0 = ember_now();
    ember_cand(c, A, B, C);
    if (c == 0) { one = ember_now() - t0; memcpy(R, C, sizeof(float) * nc); }
    err[c] = 0;
    for (int64_t i = 0; i < nc; i++) {
      double d = fabs((double)C[i] - (double)R[i]);
      if (!(d <= err[c])) err[c] = d != d ? INFINITY : d;
      if (c == 0 && fabs((double)R[i]) > ref) ref = fabs((double)R[i]);
    }
  }
  int reps = one > 0 ? (int)(%(budget)f / one) : %(reps)d;
  if (reps > %(reps)d) reps = %(reps)d;
  if (reps < 3) reps = 3;
  /* rounds of one call per candidate, so that a burst of other load hits all of them alike */
  static double t[NCAND][64];
  for (int r = 0; r < reps; r++)
    for (int c = 0; c < NCAND; c++) { double t0 = ember_now(); ember_cand(c, A, B, C); t[c][r] = ember_now() - t0; }
  for (int c = 0; c < NCAND; c++) {
    qsort(t[c], reps, sizeof(double), ember_cmp);
    printf("%%d %%.9f %%.9g %%.9g\n", c, t[c][reps / 2], err[c], ref);
  }
  return 0;
}
"""


def benchmark_source(k: Matmul, tiles: list, env: dict, threads: int, reps: int = REPS,
                     budget_s: float = BUDGET_S) -> str:
    """One C program timing ``k`` under each tile (index 0 is the reference for the check)."""
    from .codegen import PRELUDE, c_dim, c_sym
    base = replace(k, epilogue=None, tile=None)
    params = {k.a.buf: "A", k.b.buf: "B", k.out: "C"}

    def epi(ind, acc, i, j, idx):
        return [f"{ind}C[{idx}] = {acc};"]
    syms = sorted(set().union(*(free_symbols(d) for d in
                                (k.M, k.a.buf.numel, k.b.buf.numel, k.out.numel, k.a.offset, *k.a.strides))))
    src = [PRELUDE, gemm.prelude()]
    src += [f"static const int64_t {c_sym(s)} = {int(env.get(s, DEFAULT_M))};" for s in syms]
    for c, t in enumerate(tiles):
        body = gemm.print_matmul(replace(base, tile=dict(t)), params, c_dim, epi)
        src.append(f"static void ember_gemm{c}(const float *restrict A, const float *restrict B, float *restrict C) {{\n"
                   f"{body}}}\n")
    src.append("static void ember_cand(int c, const float *A, const float *B, float *C) {\n  switch (c) {\n" +
               "".join(f"    case {c}: ember_gemm{c}(A, B, C); break;\n" for c in range(len(tiles))) + "  }\n}\n")
    src.append(_MAIN % {"threads": threads, "na": c_dim(k.a.buf.numel), "nb": c_dim(k.b.buf.numel),
                        "nc": c_dim(k.out.numel), "ncand": len(tiles), "reps": min(reps, 64),
                        "budget": budget_s})
    return "\n".join(src)


def run_benchmark(source: str) -> list[tuple]:
    """Compile and run a benchmark program; rows of (candidate, median s, max |diff|, max |ref|)."""
    cc = toolchain.find_compiler()
    with tempfile.TemporaryDirectory(prefix="ember-tune-") as tmp:
        src, exe = Path(tmp) / "bench.c", Path(tmp) / "bench"
        src.write_text(source)
        objs = [str(o) for o in toolchain.objects_for(source, cc, toolchain.FLAGS)]
        proc = subprocess.run([cc, *toolchain.FLAGS, str(src), *objs, "-o", str(exe), "-lm"],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise CompileError(f"autotune benchmark did not compile:\n{proc.stderr[-4000:]}")
        stats["bench_runs"] += 1
        # the OpenMP settings the model runs under (runtime/executable.py sets a short spin)
        env = {**os.environ, "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT", "1000")}
        proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600, check=False, env=env)
        if proc.returncode != 0:
            raise CompileError(f"autotune benchmark failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    rows = []
    for line in proc.stdout.splitlines():
        c, t, err, ref = line.split()
        rows.append((int(c), float(t), float(err), float(ref)))
    return rows


def tune_kernel(k: Matmul, env: dict, threads: int, tiles: list | None = None, cache_ok: bool = True,
                reps: int | None = None, budget_s: float | None = None, min_gain: float | None = None) -> dict:
    """Pick ``k.tile`` (cached per machine and shape); returns the decision record."""
    # module settings read per call, so that tests and scripts can change them
    tiles = tiles or candidates(KC_CHOICES, MC_CHOICES)
    reps = REPS if reps is None else reps
    budget_s = BUDGET_S if budget_s is None else budget_s
    min_gain = MIN_GAIN if min_gain is None else min_gain
    m = evaluate(k.M, env)
    mb = m_bucket(m)
    n, kk, nbatch = int(k.N), int(k.K), int(prod(k.batch))
    key = cache_key(threads, mb, n, kk, nbatch)
    if cache_ok:
        rec = _load_cache().get(key)
        if rec is not None:
            stats["cache_hits"] += 1
            k.tile = dict(rec["tile"]) if rec["tile"] else None
            return dict(rec, cached=True)
    # time at the bucket's M: symbols of M bound so that M == mb (M itself a symbol: the usual case)
    benv = dict(env)
    if is_symbolic(k.M):
        syms = free_symbols(k.M)
        if len(syms) == 1:
            s = next(iter(syms))
            for v in range(1, mb + 1):
                if evaluate(k.M, {**env, s: v}) >= mb:
                    benv[s] = v
                    break
    rows = run_benchmark(benchmark_source(k, tiles, benv, threads, reps, budget_s))
    tol = 1e-6 * kk + 1e-5
    medians = [{"tile": tiles[c], "median_s": t, "max_diff": err, "ok": err <= tol * max(1.0, ref)}
               for c, t, err, ref in rows]
    ok = [r for r in medians if r["ok"]]
    best = min(ok, key=lambda r: r["median_s"]) if ok else medians[0]
    if medians[0]["ok"] and best["median_s"] * min_gain > medians[0]["median_s"]:
        best = medians[0]  # within the noise of the default: keep the default
    chosen = None if best["tile"] == tiles[0] and tiles[0] == default_tile() else dict(best["tile"])
    rec = {"shape": {"M": mb, "N": n, "K": kk, "batch": nbatch}, "threads": threads,
           "candidates": medians, "tile": chosen,
           "speedup_vs_default": medians[0]["median_s"] / best["median_s"] if best["median_s"] > 0 else 1.0}
    if cache_ok:
        _save_decision(key, rec)
    k.tile = chosen
    return dict(rec, cached=False)


def tune_program(prog: Program, threads: int, env: dict | None = None, **kw) -> list[dict]:
    """Tune every tunable GEMM of ``prog`` in place; ``env`` binds symbols (M's) to sample values."""
    env = dict(env or {})
    log, done = [], {}
    for k in prog.kernels:
        if not tunable(k):
            continue
        for s in free_symbols(k.M):
            env.setdefault(s, DEFAULT_M)
        m = evaluate(k.M, env)
        if m <= 1:
            continue  # the GEMV path does not use the tile
        shape = (m_bucket(m), int(k.N), int(k.K), int(prod(k.batch)))
        if shape in done:  # same shape in this program: same decision, no second lookup
            k.tile = dict(done[shape]) if done[shape] else None
            continue
        try:
            rec = tune_kernel(k, env, threads, **kw)
        except (CompileError, OSError, subprocess.SubprocessError, ValueError) as e:
            # tuning is an optimization: a benchmark that fails leaves the default blocking
            k.tile = None
            rec = {"shape": {"M": shape[0], "N": shape[1], "K": shape[2], "batch": shape[3]},
                   "threads": threads, "candidates": [], "tile": None, "error": str(e)[:500]}
        rec["kernel"] = k.name
        done[shape] = k.tile
        log.append(rec)
    return log


def enabled(flag) -> bool:
    if flag is not None:
        return bool(flag)
    return os.environ.get("EMBER_AUTOTUNE", "").strip() not in ("", "0")
