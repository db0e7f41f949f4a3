"""Ember against itself at other git revisions: each revision is checked out in its own
worktree and timed in its own process, the processes alternate round by round, and each
round reports medians (-> benchmarks/results/revs.md). This is what backs a "before ->
after" claim.

    flock /tmp/ember-bench.lock .venv/bin/python benchmarks/bench_revs.py 119c607 HEAD \\
        [--rounds 2] [--models MiniLM-L6-v2 b8,ResNet] [--gemm 1024x1024x1024,2048x2048x2048] \\
        [--conv 64x64x56x3x1,512x512x7x3x1] [--compile] [--paired]

    .venv/bin/python benchmarks/bench_revs.py 1c999e5 HEAD --paired --gemm "" \\
        --models "MiniLM-L6-v2 b8 dynamic,ResNet dynamic"   # models compiled with dynamic dims

Models are bench_suite's cases, chosen by name substring; GEMMs are x[M, K] @ W[K, N]
with W constant; convs are one PyTorch Conv2d + ReLU layer at batch 1, given as
CinxCoutxHxKxS (an H x H image, a K x K kernel, stride S, padding K // 2). ``--compile``
also times each model's ``ember.compile`` with an empty compile cache (after one compile
in the same process, so that torch.export's imports are warm). Everything else the
revisions share: this interpreter, torch, the compile cache. ``--paired`` (for changes of a
few percent, which whole-process alternation cannot resolve on a noisy machine): each
revision's process only compiles and saves artifacts; this process loads them all and calls
them in turn, and reports per-round time ratios against the first revision.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # see bench_suite.py: sleeping worker threads

REPO = Path(__file__).resolve().parent.parent


def conv_layer(spec: str):
    """(torch module, input, GFLOP per call) of one CinxCoutxHxKxS conv + bias + ReLU."""
    import torch
    cin, cout, h, k, s = map(int, spec.split("x"))
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, k, s, k // 2), torch.nn.ReLU()).eval()
    ho = (h + 2 * (k // 2) - k) // s + 1
    return m, torch.randn(1, cin, h, h), 2.0 * cin * cout * k * k * ho * ho / 1e9


# a model chosen as "NAME dynamic" is compiled with these dims symbolic (a dim of size 1 cannot
# be exported as dynamic: such a model is compiled from a doubled example and run on the original)
DYNAMIC = " dynamic"
DYNAMIC_DIMS = {"all-MiniLM-L6-v2": {0: "batch", 1: "seq"}, "GPT-2": {1: "seq"}, "Llama": {1: "seq"},
                "ResNet-18": {0: "batch", 2: ("h", 64, 512), 3: ("w", 64, 512)}}


def compile_dynamic(ember, name: str, model, inputs, names):
    """bench_suite case ``name`` compiled with its DYNAMIC_DIMS symbolic (also used by bench_suite)."""
    import torch
    dims = next(d for prefix, d in DYNAMIC_DIMS.items() if name.startswith(prefix))
    example = tuple(torch.cat([i, i]) if 0 in dims and i.shape[0] == 1 else i for i in inputs)
    return ember.compile(model, example, dynamic={n: dims for n in names})


def build(tree: str, models: list[str], gemms: list[str], convs: list[str],
          compile_times: bool = False) -> tuple[dict, dict]:
    """One tree's Ember compiles of the chosen workloads, in this process: ({name: (compiled,
    numpy inputs)}, {"compile NAME": seconds with an empty cache})."""
    sys.path[:0] = [tree, str(Path(tree) / "benchmarks")]
    import numpy as np
    import bench_suite
    import ember
    from ember.ir import Graph, TensorType, dtypes

    built, cold = {}, {}
    for name, make in bench_suite.cases(False):
        if any(m.endswith(DYNAMIC) and m[:-len(DYNAMIC)] in name for m in models):
            model, ins, names = make()   # compiled once for every size, timed on the example
            built[name + DYNAMIC] = (compile_dynamic(ember, name, model, ins, names), [i.numpy() for i in ins])
        if any(m in name for m in models if not m.endswith(DYNAMIC)):
            model, ins, _ = make()
            built[name] = (ember.compile(model, ins), [i.numpy() for i in ins])
            if compile_times:
                shared = os.environ.get("EMBER_CACHE_DIR")
                with tempfile.TemporaryDirectory() as empty:
                    os.environ["EMBER_CACHE_DIR"] = empty
                    t0 = time.perf_counter()
                    ember.compile(model, ins)
                    cold[f"compile {name}"] = time.perf_counter() - t0
                if shared is None:
                    del os.environ["EMBER_CACHE_DIR"]
                else:
                    os.environ["EMBER_CACHE_DIR"] = shared
    rng = np.random.default_rng(0)
    for shape in gemms:
        m, n, k = map(int, shape.split("x"))
        g = Graph()
        x = g.add_input("x", TensorType(dtypes.f32, (m, k)))
        g.outputs = [g.op("matmul", [x, g.add_const(rng.standard_normal((k, n)).astype(np.float32), "w")])]
        built[f"GEMM {shape}"] = (ember.compile(g), [rng.standard_normal((m, k)).astype(np.float32)])
    for spec in convs:
        m, x, _ = conv_layer(spec)
        built[f"conv {spec}"] = (ember.compile(m, (x,)), [x.numpy()])
    return built, cold


def worker(tree: str, models: list[str], gemms: list[str], convs: list[str], seconds: float,
           compile_times: bool = False) -> dict:
    """Medians (seconds) of one tree's Ember on the chosen workloads, in this process."""
    built, cold = build(tree, models, gemms, convs, compile_times)
    from ember.timing import measure
    calls = {name: (lambda c=c, feed=feed: c.run_numpy(feed)) for name, (c, feed) in built.items()}
    r = measure(calls, rounds=60, max_seconds=seconds)
    return {**{name: v["median"] for name, v in r.items()}, **cold}


def save_worker(tree: str, models: list[str], gemms: list[str], convs: list[str], out: str) -> None:
    """--paired: one tree's compiles saved as artifacts (out/<i>.ember, inputs in out/<i>.npz)."""
    import numpy as np
    built, _ = build(tree, models, gemms, convs)
    names = []
    for i, (name, (c, feed)) in enumerate(built.items()):
        c.save(str(Path(out) / f"{i}.ember"))
        np.savez(Path(out) / f"{i}.npz", *feed)
        names.append(name)
    (Path(out) / "names.json").write_text(json.dumps(names))


def paired(revs: list[str], dirs: dict, seconds: float) -> list[str]:
    """Every revision's artifacts loaded into this process and called in turn, round after
    round: slow phases of a shared machine hit all revisions alike, and the per-round time
    ratio against the first revision cancels them. Rows of the markdown table."""
    import statistics
    import numpy as np
    sys.path.insert(0, str(REPO))
    import ember
    names = json.loads((Path(dirs[revs[0]]) / "names.json").read_text())
    rows = []
    for i, name in enumerate(names):
        calls = []
        for rev in revs:
            d = np.load(Path(dirs[rev]) / f"{i}.npz")
            calls.append((ember.load(str(Path(dirs[rev]) / f"{i}.ember")), [d[f"arr_{j}"] for j in range(len(d.files))]))
        for m, feed in calls * 3:   # warm up
            m.run_numpy(feed)
        times = [[] for _ in revs]
        start = time.perf_counter()
        while len(times[0]) < 20 or (time.perf_counter() - start < seconds and len(times[0]) < 2000):
            for t, (m, feed) in zip(times, calls):
                t0 = time.perf_counter()
                m.run_numpy(feed)
                t.append(time.perf_counter() - t0)
        cells = []
        for t in times:
            q = statistics.quantiles([a / b for a, b in zip(t, times[0])], n=4)
            cells.append(f"{show(name, statistics.median(t))}, x{q[1]:.3f} ({q[0]:.3f}-{q[2]:.3f})")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return rows


def show(name: str, seconds: float) -> str:
    if name.startswith("GEMM "):
        m, n, k = map(int, name[5:].split("x"))
        return f"{2 * m * n * k / seconds / 1e9:.0f} GFLOP/s"
    if name.startswith("compile "):
        return f"{seconds:.1f} s"
    if name.startswith("conv "):
        return f"{seconds * 1e6:.0f} us ({conv_layer(name[5:])[2] / seconds:.0f} GFLOP/s)"
    return f"{seconds * 1e3:.2f} ms"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("revs", nargs="+", help="git revisions to compare (the first is the baseline)")
    ap.add_argument("--rounds", type=int, default=2, help="processes per revision, alternated")
    ap.add_argument("--models", default="MiniLM-L6-v2 b8,ResNet,MLP 3x1024 GELU b64",
                    help="comma-separated substrings of bench_suite's model names")
    ap.add_argument("--gemm", default="1024x1024x1024,2048x2048x2048", help="comma-separated MxNxK")
    ap.add_argument("--conv", default="", help="comma-separated CinxCoutxHxKxS conv + ReLU layers")
    ap.add_argument("--compile", action="store_true", help="also time ember.compile with an empty cache")
    ap.add_argument("--seconds", type=float, default=10.0, help="time cap per process")
    ap.add_argument("--paired", action="store_true",
                    help="time every revision's compiled artifacts in one process, call by call, "
                         "and report each one's time ratio to the first revision's in the same round")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m]
    gemms = [s for s in args.gemm.split(",") if s]
    convs = [s for s in args.conv.split(",") if s]
    if args.paired and args.compile:
        ap.error("--compile times compiles in each revision's process; it does not combine with --paired")
    if args.worker and args.save:
        save_worker(args.worker, models, gemms, convs, args.save)
        return
    if args.worker:
        print(json.dumps(worker(args.worker, models, gemms, convs, args.seconds, args.compile)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        for i, rev in enumerate(args.revs):
            tree = str(Path(tmp) / f"rev{i}")
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", tree, rev], check=True)
            trees[rev] = tree
        results = {rev: [] for rev in args.revs}
        try:
            if args.paired:
                dirs = {}
                for i, (rev, tree) in enumerate(trees.items()):
                    dirs[rev] = str(Path(tmp) / f"art{i}")
                    os.makedirs(dirs[rev])
                    subprocess.run([sys.executable, __file__, *args.revs, "--worker", tree, "--save", dirs[rev],
                                    "--models", args.models, "--gemm", args.gemm, "--conv", args.conv],
                                   check=True, capture_output=True, text=True)
                rows = paired(args.revs, dirs, args.seconds)
            for _ in range(0 if args.paired else args.rounds):
                for rev, tree in trees.items():
                    out = subprocess.run([sys.executable, __file__, *args.revs, "--worker", tree,
                                          "--models", args.models, "--gemm", args.gemm, "--conv", args.conv,
                                          "--seconds", str(args.seconds)] + ["--compile"] * args.compile,
                                         check=True, capture_output=True, text=True).stdout
                    results[rev].append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", tree], check=False)
    head = ["| workload | " + " | ".join(args.revs) + " |", "|---|" + "---|" * len(args.revs)]
    if args.paired:
        lines = [f"`python benchmarks/bench_revs.py {' '.join(args.revs)} --paired`: each revision's "
                 "artifacts called in turn in one process; median time, then the median (quartiles) "
                 f"of the per-round time ratio to {args.revs[0]} (below 1: faster).", ""] + head + rows
    else:
        lines = [f"`python benchmarks/bench_revs.py {' '.join(args.revs)}`: Ember at each revision, "
                 f"{args.rounds} alternating processes each, the median of each process.", ""] + head
        for name in list(results[args.revs[0]][0]):
            cells = [" / ".join(show(name, r[name]) for r in results[rev]) for rev in args.revs]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    out = REPO / "benchmarks" / "results" / "revs.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines) + f"\nwrote {out}")


if __name__ == "__main__":
    main()
