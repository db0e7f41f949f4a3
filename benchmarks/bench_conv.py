"""ResNet-18's convolutions one by one: Ember vs PyTorch (and ONNX Runtime), GFLOP/s.

    flock /tmp/ember-bench.lock .venv/bin/python benchmarks/bench_conv.py [--only stem] [--seconds 2]

Each layer is compiled alone as conv2d + bias + ReLU (what batch-norm folding and epilogue
fusion leave of a ResNet conv), batch 1, float32, all threads (or ``--threads``). Contenders run interleaved
(ember/timing.py) and the table reports medians; GFLOP/s counts 2 * MACs of the convolution.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
import ember  # noqa: E402
from ember.timing import measure  # noqa: E402

# (name, C, O, H, kernel, stride, padding, how many times ResNet-18 runs it)
SHAPES = [
    ("stem 7x7/2", 3, 64, 224, 7, 2, 3, 1),
    ("l1 3x3 64", 64, 64, 56, 3, 1, 1, 4),
    ("l2 3x3/2 64>128", 64, 128, 56, 3, 2, 1, 1),
    ("l2 1x1/2 ds", 64, 128, 56, 1, 2, 0, 1),
    ("l2 3x3 128", 128, 128, 28, 3, 1, 1, 3),
    ("l3 3x3/2 128>256", 128, 256, 28, 3, 2, 1, 1),
    ("l3 1x1/2 ds", 128, 256, 28, 1, 2, 0, 1),
    ("l3 3x3 256", 256, 256, 14, 3, 1, 1, 3),
    ("l4 3x3/2 256>512", 256, 512, 14, 3, 2, 1, 1),
    ("l4 1x1/2 ds", 256, 512, 14, 1, 2, 0, 1),
    ("l4 3x3 512", 512, 512, 7, 3, 1, 1, 3),
]


def layer(C, O, k, s, p):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(C, O, k, s, p), torch.nn.ReLU()).eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="substring of the layer names to run")
    ap.add_argument("--seconds", type=float, default=2.0, help="time cap per layer")
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="threads for every contender (default: all)")
    args = ap.parse_args()
    if args.threads:  # one thread is the steadier measure of kernel quality on a shared machine
        torch.set_num_threads(args.threads)
    ort_runner = None
    if not args.no_ort:
        try:
            from bench_suite import _onnx_runner as ort_runner
        except ImportError:  # onnx / onnxruntime not installed
            ort_runner = None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians over interleaved rounds")
    cols = ["ember", "torch"] + (["onnxruntime"] if ort_runner else [])
    print(f"{'layer':18} {'xN':>3} " + " ".join(f"{c + ' ms':>14} {'GF/s':>6}" for c in cols))
    total = dict.fromkeys(cols, 0.0)
    for name, C, O, H, k, s, p, times in SHAPES:
        if args.only not in name:
            continue
        m = layer(C, O, k, s, p)
        x = torch.randn(1, C, H, H)
        Ho = (H + 2 * p - k) // s + 1
        flops = 2.0 * O * Ho * Ho * C * k * k
        compiled = ember.compile(m, (x,), threads=args.threads or None)
        xn = x.numpy()
        with torch.no_grad():
            want = m(x).numpy()
        got = np.asarray(compiled(xn))
        err = float(np.abs(got - want).max() / (np.abs(want).max() + 1e-30))
        cont = {"ember": lambda compiled=compiled, xn=xn: compiled(xn)}

        def eager(m=m, x=x):
            with torch.no_grad():
                return m(x)
        cont["torch"] = eager
        if ort_runner:
            cont["onnxruntime"] = ort_runner(m, (x,), ["x"])
        res = measure(cont, rounds=400, max_seconds=args.seconds)
        row = f"{name:18} {times:3d} "
        for c in cols:
            t = res[c]["median"]
            total[c] += t * times
            row += f"{t * 1e3:14.3f} {flops / t / 1e9:6.1f}"
        print(row + (f"   rel err {err:.1e}" if err > 1e-5 else ""), flush=True)
    print(f"{'sum over ResNet-18':22} " + " ".join(f"{total[c] * 1e3:14.3f} {'':6}" for c in cols))


if __name__ == "__main__":
    main()
