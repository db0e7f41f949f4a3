"""Kernel by kernel, each built for AVX2 (-mno-avx512f) and natively (-march=native, which
takes the AVX-512 kernels where the CPU has them), in one process, interleaved, medians:

* fp32 GEMM x[M, K] @ W[K, N] (W constant) at square and transformer shapes;
* fused attention [8, 12, 128, 32] with a padding mask (MiniLM at batch 8);
* ResNet-18's 3x3 stride-1 conv + bias + ReLU layers, Winograd F(4x4, 3x3) against the
  implicit-im2col GEMM (``winograd.worthwhile`` forced off); the 512-channel 7x7 layer has
  too few tiles, so both of its columns are the GEMM.

    flock /tmp/ember-bench.lock .venv/bin/python benchmarks/bench_kernels.py [--seconds 5]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # see bench_suite.py: sleeping worker threads

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import ember  # noqa: E402
from ember.backends.cpu import toolchain  # noqa: E402
from ember.ir import Graph, TensorType, dtypes  # noqa: E402
from ember.lower import winograd  # noqa: E402
from ember.timing import measure  # noqa: E402

BUILDS = {"avx2": ("-mno-avx512f",), "native": ()}
GEMMS = [(1024, 1024, 1024), (128, 384, 384), (128, 1536, 384), (1024, 768, 3072), (196, 64, 576)]
CONVS = [(64, 56), (128, 28), (256, 14), (512, 7)]   # (channels in = out, image side)


def compiled_per_build(make, variants=("",)):
    """{f"{build}{variant}": compiled} with toolchain flags (and ``make(variant)``) per build."""
    base, out = toolchain.FLAGS, {}
    try:
        for build, flags in BUILDS.items():
            toolchain.FLAGS = base + flags
            for v in variants:
                out[build + v] = make(v)
    finally:
        toolchain.FLAGS = base
    return out


def timed(models, call, seconds):
    r = measure({k: (lambda c=c: call(c)) for k, c in models.items()}, rounds=300, max_seconds=seconds)
    return {k: v["median"] for k, v in r.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="time cap per case")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print("GEMM GFLOP/s")
    for m, n, k in GEMMS:
        g = Graph()
        x = g.add_input("x", TensorType(dtypes.f32, (m, k)))
        g.outputs = [g.op("matmul", [x, g.add_const(rng.standard_normal((k, n)).astype(np.float32), "w")])]
        xn = rng.standard_normal((m, k)).astype(np.float32)
        t = timed(compiled_per_build(lambda v: ember.compile(g)), lambda c: c.run_numpy([xn]), args.seconds)
        print(f"  {m}x{n}x{k}: " + "  ".join(f"{b} {2 * m * n * k / s / 1e9:.1f}" for b, s in t.items()))

    print("attention [8, 12, 128, 32], padding mask")
    g = Graph()
    q, kk, v = (g.add_input(name, TensorType(dtypes.f32, (8, 12, 128, 32))) for name in "qkv")
    mask = g.add_input("m", TensorType(dtypes.f32, (8, 1, 1, 128)))
    g.outputs = [g.op("attention", [q, kk, v, mask], {"scale": 32 ** -0.5, "causal": False, "safe": True})]
    pad = np.zeros((8, 1, 1, 128), np.float32)
    pad[..., 40:] = np.finfo(np.float32).min          # short sentences padded to 128
    feed = [rng.standard_normal((8, 12, 128, 32)).astype(np.float32) for _ in "qkv"] + [pad]
    t = timed(compiled_per_build(lambda v: ember.compile(g)), lambda c: c.run_numpy(feed), args.seconds)
    print("  " + "  ".join(f"{b} {s * 1e3:.3f} ms" for b, s in t.items()))

    print("conv 3x3 + bias + ReLU, batch 1 (ms)")
    real = winograd.worthwhile
    for c, h in CONVS:
        torch.manual_seed(0)
        layer = torch.nn.Sequential(torch.nn.Conv2d(c, c, 3, 1, 1), torch.nn.ReLU()).eval()
        x = torch.randn(1, c, h, h)
        xn = x.numpy()

        def make(variant, layer=layer, x=x):
            winograd.worthwhile = real if variant == "-wino" else (lambda *a: False)
            try:
                return ember.compile(layer, (x,))
            finally:
                winograd.worthwhile = real
        t = timed(compiled_per_build(make, ("-wino", "-gemm")), lambda m: m(xn), args.seconds)
        print(f"  {c:4d}ch {h:3d}^2: " + "  ".join(f"{b} {s * 1e3:.3f}" for b, s in t.items()))


if __name__ == "__main__":
    main()
