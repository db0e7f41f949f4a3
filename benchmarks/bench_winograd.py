"""Winograd F(4x4, 3x3) against the implicit-im2col GEMM on ResNet-18's 3x3 stride-1 layers,
with the AVX2 and (where the machine has it) the AVX-512 kernels, in one process, interleaved.

    flock /tmp/ember-bench.lock .venv/bin/python benchmarks/bench_winograd.py [--seconds 6]

Each layer is conv2d + bias + ReLU at batch 1, compiled four ways: {AVX2 build (-mno-avx512f),
native build} x {Winograd, GEMM (``winograd.worthwhile`` forced off)}. The 512-channel 7x7
layer has too few tiles, so both of its columns are the GEMM.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # see bench_suite.py: sleeping worker threads

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import ember  # noqa: E402
from ember.backends.cpu import toolchain  # noqa: E402
from ember.lower import winograd  # noqa: E402
from ember.timing import measure  # noqa: E402

LAYERS = [(64, 56), (128, 28), (256, 14), (512, 7)]   # (channels in = out, image side)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0, help="time cap per layer")
    args = ap.parse_args()
    base, real = toolchain.FLAGS, winograd.worthwhile
    print(f"{'layer':12} " + " ".join(f"{k:>12}" for k in ("avx2-wino", "avx2-gemm", "native-wino", "native-gemm")))
    for c, h in LAYERS:
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Conv2d(c, c, 3, 1, 1), torch.nn.ReLU()).eval()
        x = torch.randn(1, c, h, h)
        xn = x.numpy()
        models = {}
        try:
            for isa, flags in (("avx2", ("-mno-avx512f",)), ("native", ())):
                toolchain.FLAGS = base + flags
                for mode in ("wino", "gemm"):
                    winograd.worthwhile = real if mode == "wino" else (lambda *a: False)
                    models[f"{isa}-{mode}"] = ember.compile(m, (x,))
        finally:
            toolchain.FLAGS, winograd.worthwhile = base, real
        r = measure({k: (lambda c=cm: c(xn)) for k, cm in models.items()}, rounds=200, max_seconds=args.seconds)
        print(f"{c:4d}ch {h:3d}^2 " + " ".join(f"{r[k]['median'] * 1e3:9.3f} ms" for k in models))


if __name__ == "__main__":
    main()
