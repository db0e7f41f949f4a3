"""The fused attention kernel vs the unfused path (GEMM -> max -> exp -> sum -> GEMM), in one
process, interleaved (ember/timing.py), medians.

    flock /tmp/ember-bench.lock .venv/bin/python benchmarks/bench_attention.py [--quick] [--models]

Cases: BERT-like [b, 12 heads, s, 64] at s = 128 and 1024, with a padding mask, and
GPT-2-like causal ones. q, k, v arrive as [b, s, heads, 64] projections permuted to
[b, heads, s, 64], as in the models. ``--models`` also times the suite's transformers
(bench_suite.py: MiniLM b1/b8, GPT-2, Llama at s128) compiled both ways.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GOMP_SPINCOUNT", "1000")   # see bench_suite.py: idle threads must sleep

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ember
from ember.ir import Graph, TensorType, dtypes, sym
from ember.lower import rules, rules_attention
from ember.timing import fmt_time, measure

HEADS, D = 12, 64


def graph(causal: bool, masked: bool) -> Graph:
    b, s = sym("b"), sym("s")
    g = Graph()
    qkv = [g.add_input(n, TensorType(dtypes.f32, (b, s, HEADS, D))) for n in "qkv"]
    ins = [g.op("permute", [x], {"perm": (0, 2, 1, 3)}) for x in qkv]
    if masked:
        ins.append(g.add_input("mask", TensorType(dtypes.f32, (b, 1, 1, s))))
    g.outputs = [g.op("attention", ins, {"scale": D ** -0.5, "causal": causal, "safe": True})]
    return g


def compile_both(g, inputs=None):
    fused = ember.compile(g, inputs)
    saved = rules.RULES["attention"]
    rules.RULES["attention"] = rules_attention._unfused   # the path every op took before
    try:
        unfused = ember.compile(g, inputs)
    finally:
        rules.RULES["attention"] = saved
    assert "ember_att_rows" in fused.source and "ember_att_rows" not in unfused.source
    return fused, unfused


def row(name, t, err):
    cell = {k: f"{fmt_time(v['median'])} ({fmt_time(v['p10'])}-{fmt_time(v['p90'])})" for k, v in t.items()}
    ratio = t["unfused"]["median"] / t["fused"]["median"]
    print(f"{name:34}  {cell['unfused']:>24}  {cell['fused']:>24}  {ratio:6.2f}x   (max |diff| {err:.1e})",
          flush=True)


def models(quick: bool):
    import torch
    from bench_suite import cases
    print(f"\n{'model':34}  {'unfused':>24}  {'fused':>24}  speed-up")
    for name, build in cases(False):
        if not any(k in name for k in ("MiniLM", "GPT-2", "Llama")):
            continue
        model, inputs, _ = build()
        fused, unfused = compile_both(model, inputs)
        with torch.no_grad():
            err = float((fused(*inputs) - unfused(*inputs)).abs().max())
        t = measure({"unfused": lambda u=unfused, x=inputs: u(*x), "fused": lambda f=fused, x=inputs: f(*x)},
                    rounds=20 if quick else 100, max_seconds=5 if quick else 20)
        row(name, t, err)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cases = [("encoder, padding mask", False, True, 1, 128), ("encoder, padding mask", False, True, 8, 128),
             ("encoder, padding mask", False, True, 1, 1024), ("causal", True, False, 1, 128),
             ("causal", True, False, 1, 1024)]
    built = {}
    print(f"attention [b, {HEADS} heads, s, {D}], float32, {os.cpu_count()} cores; medians (p10-p90)")
    print(f"{'case':34}  {'unfused':>24}  {'fused':>24}  speed-up")
    for name, causal, masked, b, s in cases:
        if (causal, masked) not in built:
            built[causal, masked] = compile_both(graph(causal, masked))
        fused, unfused = built[causal, masked]
        xs = [rng.standard_normal((b, s, HEADS, D)).astype(np.float32) for _ in range(3)]
        if masked:
            m = np.zeros((b, 1, 1, s), np.float32)
            m[..., s * 3 // 4:] = -np.inf   # the last quarter is padding
            xs.append(m)
        want, got = unfused.run_numpy(xs)[0], fused.run_numpy(xs)[0]
        err = float(np.max(np.abs(want - got)))
        t = measure({"unfused": lambda u=unfused, x=xs: u.run_numpy(x), "fused": lambda f=fused, x=xs: f.run_numpy(x)},
                    rounds=30 if args.quick else 200, max_seconds=3 if args.quick else 10)
        row(f"{name} b{b} s{s}", t, err)
    if args.models:
        models(args.quick)


if __name__ == "__main__":
    main()
