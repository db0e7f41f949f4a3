"""quant_conv2d (int8 codes, im2col + int8 GEMM) vs the fp32 conv2d, and vs the old loop-IR
reduction lowering of quant_conv2d, on ResNet-like shapes. Interleaved medians
(ember.timing.measure). Run under the shared lock (noisy shared machine):
    flock /tmp/ember-bench.lock python benchmarks/bench_quant_conv.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ember
from ember.ir import Graph, TensorType, dtypes
from ember.lower import rules_quant
from ember.timing import fmt_time, measure

# (name, N, C, O, H, W, k, stride, padding)
SHAPES = [
    ("64->64 3x3 @ 4x28x28", 4, 64, 64, 28, 28, 3, 1, 1),
    ("128->128 3x3 @ 1x28x28", 1, 128, 128, 28, 28, 3, 1, 1),
    ("64->128 3x3 s2 @ 1x56x56", 1, 64, 128, 56, 56, 3, 2, 1),
]


def graphs(N, C, O, H, W, k, s, p):
    rng = np.random.default_rng(0)
    attrs = {"stride": (s, s), "padding": (p, p)}
    wf = (rng.standard_normal((O, C, k, k)) * 0.05).astype(np.float32)
    bias = rng.standard_normal(O).astype(np.float32)
    gf = Graph()
    x = gf.add_input("x", TensorType(dtypes.f32, (N, C, H, W)))
    gf.outputs = [gf.op("conv2d", [x, gf.add_const(wf, "w"), gf.add_const(bias, "b")], attrs)]
    ws = (np.abs(wf).reshape(O, -1).max(axis=1) / 127).astype(np.float32)
    wq = np.clip(np.rint(wf / ws.reshape(-1, 1, 1, 1)), -127, 127).astype(np.int8)
    gq = Graph()
    xq = gq.add_input("x", TensorType(dtypes.u8, (N, C, H, W)))
    ins = [xq, gq.add_const(np.float32(0.02), "s"), gq.add_const(np.uint8(128), "z"),
           gq.add_const(wq, "w"), gq.add_const(ws, "ws"), gq.add_const(bias, "b")]
    gq.outputs = [gq.op("quant_conv2d", ins, attrs)]
    xf = rng.standard_normal((N, C, H, W)).astype(np.float32)
    xu = rng.integers(0, 256, (N, C, H, W)).astype(np.uint8)
    return gf, gq, xf, xu


def main():
    print(f"{'shape':28s} {'fp32 conv':>11s} {'int8 GEMM':>11s} {'int8 reduce':>12s} {'fp32/int8':>9s}")
    for name, *shape in SHAPES:
        gf, gq, xf, xu = graphs(*shape)
        cf, cq = ember.compile(gf), ember.compile(gq)
        assert "int8 GEMM, route" in cq.source
        orig = rules_quant._quant_conv2d_gemm
        rules_quant._quant_conv2d_gemm = lambda *a: None      # the old reduction lowering
        try:
            cr = ember.compile(gq.clone())
        finally:
            rules_quant._quant_conv2d_gemm = orig
        assert "int8 GEMM, route" not in cr.source
        np.testing.assert_allclose(cq.run_numpy([xu])[0], cr.run_numpy([xu])[0], rtol=1e-5, atol=1e-4)
        t = measure({"f": lambda: cf.run_numpy([xf]), "q": lambda: cq.run_numpy([xu]),
                     "r": lambda: cr.run_numpy([xu])}, rounds=60, max_seconds=8.0)
        f, qq, rr = (t[k]["median"] for k in "fqr")
        print(f"{name:28s} {fmt_time(f):>11s} {fmt_time(qq):>11s} {fmt_time(rr):>12s} {f / qq:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
