"""First benchmark: Ember vs PyTorch eager, in one process, interleaved, medians.

    .venv/bin/python benchmarks/bench_first.py            # writes benchmarks/results/first.md

Models: the primer's nn.Linear(10, 1) at batch 1, and an MLP of three 1024x1024 linear
layers with GELU at batch 1 and 64. For the primer's model it also measures the floor of
a ctypes call (an empty C function with the same five pointer arguments), the cost of
Ember's own Python around that call, and the torch <-> numpy conversion.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# Set before torch loads libgomp: worker threads that spin long after a parallel region
# starve whichever contender runs next in an interleaved benchmark (torch's and Ember's alike).
os.environ.setdefault("GOMP_SPINCOUNT", "1000")
import torch  # noqa: E402

import ember  # noqa: E402
from ember import demo  # noqa: E402
from ember.backends.cpu.toolchain import find_compiler  # noqa: E402
from ember.timing import fmt_time, measure  # noqa: E402


def ctypes_floor():
    """A compiled empty function with ember_main's signature, called through ctypes."""
    src = "int noop(const long *d, void *const *a, void *const *b, void *const *c, char *w) { return 0; }\n"
    tmp = Path(tempfile.mkdtemp())
    (tmp / "noop.c").write_text(src)
    subprocess.run([find_compiler(), "-O2", "-shared", "-fPIC", str(tmp / "noop.c"), "-o", str(tmp / "noop.so")],
                   check=True)
    fn = ctypes.CDLL(str(tmp / "noop.so")).noop
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 5
    return lambda: fn(None, None, None, None, None)


def bench_model(name, model, inputs, rounds):
    compiled = ember.compile(model, inputs)
    with torch.no_grad():
        want = model(*inputs)
    err = float((compiled(*inputs) - want).abs().max())
    np_inputs = [i.numpy() for i in inputs]

    def eager():
        with torch.no_grad():
            return model(*inputs)
    contenders = {"torch eager": eager, "ember (torch in/out)": lambda: compiled(*inputs),
                  "ember (numpy in/out)": lambda: compiled.run_numpy(np_inputs)}
    return measure(contenders, rounds=rounds, max_seconds=20), err


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "first.md"))
    args = ap.parse_args()
    lines = ["# Ember vs PyTorch eager (first benchmark)", "",
             f"`{' '.join([Path(sys.executable).name] + sys.argv)}` — {platform.processor() or platform.machine()}, "
             f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, GOMP_SPINCOUNT={os.environ['GOMP_SPINCOUNT']}; "
             f"medians of interleaved runs.", "",
             "| model | torch eager | ember (torch in/out) | ember (numpy in/out) | speed-up (torch in/out) | max abs err |",
             "|---|---|---|---|---|---|"]
    cases = [("nn.Linear(10,1) b1", *demo.linear()), ("MLP 3x1024 GELU b1", *demo.mlp(1)),
             ("MLP 3x1024 GELU b64", *demo.mlp(64))]
    for name, model, inputs in cases:
        rounds = args.rounds if "Linear" in name else max(args.rounds // 10, 50)
        t, err = bench_model(name, model, inputs, rounds)
        e, a, n = (t[k]["median"] for k in ("torch eager", "ember (torch in/out)", "ember (numpy in/out)"))
        lines.append(f"| {name} | {fmt_time(e)} | {fmt_time(a)} | {fmt_time(n)} | {e / a:.2f}x | {err:.1e} |")
        print(lines[-1], flush=True)
    floor = measure({"ctypes floor": ctypes_floor()}, rounds=args.rounds)["ctypes floor"]["median"]
    lines += ["", f"Floor of one ctypes call with five pointer arguments (empty C function): {fmt_time(floor)}."]
    print(lines[-1])
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
