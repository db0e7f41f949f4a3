"""The benchmark suite: Ember vs PyTorch eager, torch.compile (inductor) and ONNX Runtime.

    .venv/bin/python benchmarks/bench_suite.py            # ~10 minutes; writes benchmarks/results/suite.{md,png}
    .venv/bin/python benchmarks/bench_suite.py --quick    # fewer rounds, smaller GEMMs, no inductor

All contenders run in one process, interleaved (every contender once per round, see
ember/timing.py), and the table reports medians. Seeds are fixed. Per model, every
contender's output is compared with eager PyTorch (max abs error). A contender that fails
to build (an export error, an inductor crash) is reported with its error, not dropped.
Also measured: each model compiled once with dynamic batch / sequence dims against its
static compile; where Ember's time goes (``compiled.profile``); GEMM GFLOP/s (Ember's packed-weight GEMM vs torch.mm) and the machine's
FMA peak (a register-resident FMA loop in C, one thread and all threads).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

# Every contender's worker threads must go to sleep soon after their work: a runtime whose
# threads spin-wait (OpenMP's default, ONNX Runtime's default) steals the two cores from the
# next contender in the interleaved rounds and turns the medians into a measure of that.
# libgomp (shared by PyTorch, inductor and Ember) reads this when it loads, so before torch.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ember  # noqa: E402
from ember.backends.cpu.toolchain import find_compiler  # noqa: E402
from ember.ir.cost import flops  # noqa: E402
from ember.runtime import target  # noqa: E402
from ember.timing import fmt_time, measure  # noqa: E402

RESULTS = Path(__file__).parent / "results"


# ---------------------------------------------------------------------------- models

class Hidden(torch.nn.Module):
    """A HuggingFace model returning its last hidden state as one tensor."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids, attention_mask=None):
        kw = {"attention_mask": attention_mask} if attention_mask is not None else {}
        return self.m(input_ids=input_ids, use_cache=False, **kw).last_hidden_state


class BasicBlock(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(torch.nn.Module):
    """torchvision's resnet18 layout (without torchvision): 4 stages of 2 basic blocks."""

    def __init__(self, classes=1000):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _randomize_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def cases(quick: bool):
    """(name, builder) pairs; a builder returns (model, inputs, input_names)."""
    from ember import demo

    def linear():
        torch.manual_seed(0)
        return torch.nn.Linear(10, 1).eval(), (torch.randn(1, 10),), ["input"]

    def mlp(b):
        def build():
            torch.manual_seed(0)
            m, ins = demo.mlp(b)
            return m, ins, ["input"]
        return build

    def minilm(b):
        def build():
            import minilm_model
            sents = (minilm_model.SENTENCES * 4)[:b]
            ids, mask = minilm_model.tokenize(sents, seq=128)
            model = minilm_model.make()[0]
            return model, (ids, mask), ["input_ids", "attention_mask"]
        return build

    def gpt2():
        import transformers
        torch.manual_seed(0)
        cfg = transformers.GPT2Config(n_layer=4, n_embd=512, n_head=8, n_positions=128)
        m = Hidden(transformers.GPT2Model(cfg).eval()).eval()
        return m, (torch.randint(0, cfg.vocab_size, (1, 128)),), ["input_ids"]

    def llama():
        import transformers
        torch.manual_seed(0)
        cfg = transformers.LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                                       num_attention_heads=8, num_key_value_heads=8, vocab_size=32000,
                                       max_position_embeddings=128)
        m = Hidden(transformers.LlamaModel(cfg).eval()).eval()
        return m, (torch.randint(0, cfg.vocab_size, (1, 128)),), ["input_ids"]

    def resnet():
        torch.manual_seed(0)
        return _randomize_bn(ResNet18()).eval(), (torch.randn(1, 3, 224, 224),), ["x"]

    out = [("nn.Linear(10,1) b1", linear), ("MLP 3x1024 GELU b1", mlp(1)), ("MLP 3x1024 GELU b64", mlp(64)),
           ("all-MiniLM-L6-v2 b1 s128", minilm(1)), ("all-MiniLM-L6-v2 b8 s128", minilm(8)),
           ("GPT-2 4L d512 s128", gpt2), ("Llama 4L d512 s128", llama), ("ResNet-18 1x3x224x224", resnet)]
    return out[:5] if quick else out


# ---------------------------------------------------------------------------- contenders

def _onnx_runner(model, inputs, names):
    import onnxruntime as ort
    path = Path(tempfile.mkdtemp()) / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(model, inputs, str(path), input_names=names, output_names=["out"],
                          opset_version=17, dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see GOMP_SPINCOUNT
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {n: i.numpy() for n, i in zip(names, inputs)}
    return lambda: sess.run(None, feed)[0]


def _as_np(y):
    if isinstance(y, (list, tuple)):
        y = y[0]
    return y.detach().numpy() if hasattr(y, "detach") else np.asarray(y)


def bench_model(name, build, args, budget):
    print(f"\n== {name}", flush=True)
    model, inputs, names = build()
    with torch.no_grad():
        want = _as_np(model(*inputs))
    contenders, errors, notes = {}, {}, {}

    def eager():
        with torch.no_grad():
            return model(*inputs)
    contenders["torch eager"] = eager
    t0 = time.perf_counter()
    compiled = ember.compile(model, inputs)
    notes["ember compile"] = time.perf_counter() - t0
    env = compiled.native.bind([tuple(i.shape) for i in inputs])
    gflop = flops(compiled.graph, env) / 1e9
    contenders["ember"] = lambda: compiled(*inputs)
    if not args.no_inductor and budget["inductor"] > 0:
        try:
            t0 = time.perf_counter()
            cm = torch.compile(model)
            with torch.no_grad():
                cm(*inputs)

            def inductor():
                with torch.no_grad():
                    return cm(*inputs)
            contenders["torch.compile"] = inductor
            spent = time.perf_counter() - t0
            notes["inductor compile"] = spent
            budget["inductor"] -= spent
        except Exception as e:  # recorded in the table, not fatal
            errors["torch.compile"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    elif not args.no_inductor:
        errors["torch.compile"] = "skipped: inductor compile-time budget spent"
    try:
        contenders["onnxruntime"] = _onnx_runner(model, inputs, names)
    except Exception as e:
        errors["onnxruntime"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    errs = {}
    for k, fn in list(contenders.items()):
        try:
            errs[k] = float(np.abs(_as_np(fn()).astype(np.float64) - want).max())
        except Exception as e:
            errors[k] = f"{type(e).__name__}: {str(e)[:120]}"
            del contenders[k]
    rounds = args.rounds if "Linear" in name else max(args.rounds // 20, 20)
    t = measure(contenders, rounds=rounds, warmup=3, max_seconds=args.seconds)
    for k, v in t.items():
        print(f"  {k:14s} {fmt_time(v['median']):>10s}  (p10 {fmt_time(v['p10'])}, p90 {fmt_time(v['p90'])}, "
              f"{v['runs']} runs, max abs err {errs.get(k, float('nan')):.1e})", flush=True)
    for k, e in errors.items():
        print(f"  {k:14s} FAILED {e}", flush=True)
    # where Ember's time goes: every kernel timed inside the native call (about two seconds of runs)
    runs = int(min(200, max(5, 2.0 / t["ember"]["median"]))) if "ember" in t else 5
    prof = compiled.profile(*inputs, runs=runs)
    print("\n".join("  " + ln for ln in prof.table(5).splitlines()), flush=True)
    return {"time": t, "errors": errors, "err": errs, "notes": notes, "gflop": gflop, "profile": prof}


# ---------------------------------------------------------------------------- dynamic shapes

# models compiled once for every size too (their dynamic dims: bench_revs.DYNAMIC_DIMS)
DYNAMIC = ["all-MiniLM-L6-v2 b8 s128", "GPT-2 4L d512 s128", "ResNet-18 1x3x224x224"]


def bench_dynamic(all_cases, args):
    """Each model compiled for its example's shapes and compiled once with dynamic dims, both
    timed on the example in one process, interleaved: what a dynamic compile costs at run time.
    (A dim of size 1 cannot be exported as dynamic, so such a model is compiled from a doubled
    example and run on the original.)"""
    from bench_revs import compile_dynamic
    rows = []
    for name in DYNAMIC:
        build = dict(all_cases).get(name)
        if build is None or args.only and args.only not in name:
            continue
        print(f"\n== dynamic: {name}", flush=True)
        model, inputs, names = build()
        static = ember.compile(model, inputs)
        dyn = compile_dynamic(ember, name, model, inputs, names)
        want = _as_np(static(*inputs))
        err = float(np.abs(_as_np(dyn(*inputs)).astype(np.float64) - want).max())
        t = measure({"static": lambda: static(*inputs), "dynamic": lambda: dyn(*inputs)},
                    rounds=max(args.rounds // 20, 20), warmup=3, max_seconds=args.seconds)
        shape = ", ".join(f"{n}[{', '.join(str(d) for d in v.shape)}]" for n, v in zip(names, dyn.graph.inputs))
        rows.append((name, shape, t["static"]["median"], t["dynamic"]["median"], static.kernels, dyn.kernels, err))
        print(f"  static {fmt_time(t['static']['median'])}, dynamic {fmt_time(t['dynamic']['median'])}", flush=True)
    return rows


# ---------------------------------------------------------------------------- GEMM and peak

def bench_gemm(shapes, args):
    """GFLOP/s of x[M,K] @ W[K,N] with W a constant (Ember packs it at compile time)."""
    from ember.ir import Graph, TensorType, dtypes
    rows = []
    for (m, k, n, label) in shapes:
        rng = np.random.default_rng(0)
        w = rng.standard_normal((k, n)).astype(np.float32)
        x = rng.standard_normal((m, k)).astype(np.float32)
        g = Graph()
        xi = g.add_input("x", TensorType(dtypes.f32, (m, k)))
        g.outputs = [g.op("matmul", [xi, g.add_const(w, "w")])]
        c = ember.compile(g)
        xt, wt = torch.from_numpy(x), torch.from_numpy(w)
        err = float(np.abs(c.run_numpy([x])[0] - (xt @ wt).numpy()).max())
        t = measure({"ember": lambda: c.run_numpy([x]), "torch.mm": lambda: torch.mm(xt, wt)},
                    rounds=5000, warmup=5, max_seconds=args.gemm_seconds)  # small shapes: many rounds
        flops = 2.0 * m * n * k
        e, p = flops / t["ember"]["median"] / 1e9, flops / t["torch.mm"]["median"] / 1e9
        rows.append((label, m, n, k, e, p, err))
        print(f"  GEMM {label:28s} ember {e:7.1f} GFLOP/s   torch.mm {p:7.1f} GFLOP/s   ({e / p:.2f}x, err {err:.1e})",
              flush=True)
    return rows


PEAK_C = r"""
#include <immintrin.h>
#include <stdio.h>
#include <omp.h>
/* the widest FMA the compiler targets: what Ember's GEMM is compiled for on this machine */
#if defined(__AVX512F__)
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define STORE _mm512_storeu_ps
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
#define STORE _mm256_storeu_ps
#endif
int main(void) {
  /* each thread times its own loop after a barrier, and the rates add up: a thread that
     starts late, or that the OS parks for a while, lowers only its own share */
  const long iters = 100000000; float sink = 0; double rate = 0;
  #pragma omp parallel reduction(+:sink, rate)
  {
    vec a[10], b = SET1(0.999f), c = SET1(0.001f);
    for (int i = 0; i < 10; i++) a[i] = SET1((float)omp_get_thread_num() + i);
    #pragma omp barrier
    double t0 = omp_get_wtime();
    for (long it = 0; it < iters / 10; it++) {
      #pragma GCC unroll 10
      for (int i = 0; i < 10; i++) a[i] = FMA(a[i], b, c);
    }
    rate += 2.0 * LANES * iters / (omp_get_wtime() - t0) / 1e9;
    vec s = a[0]; for (int i = 1; i < 10; i++) s = ADD(s, a[i]);
    float o[LANES]; STORE(o, s); sink += o[0];
  }
  printf("%f %d %f\n", rate, omp_get_max_threads(), sink);
  return 0;
}
"""


def machine_peak():
    """GFLOP/s of a register-resident FMA loop, 16-wide with AVX-512 else 8-wide: (one thread,
    all threads), or None."""
    if "avx2" not in target.host()["flags"] or "fma" not in target.host()["flags"]:
        return None
    tmp = Path(tempfile.mkdtemp())
    (tmp / "peak.c").write_text(PEAK_C)
    subprocess.run([find_compiler(), "-O2", "-march=native", "-fopenmp", str(tmp / "peak.c"), "-o",
                    str(tmp / "peak")], check=True)
    out = {}
    for threads in (1, os.cpu_count() or 1):
        best = 0.0
        for _ in range(5):
            r = subprocess.run([str(tmp / "peak")], capture_output=True, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            best = max(best, float(r.stdout.split()[0]))
        out[threads] = best
    return out


# ---------------------------------------------------------------------------- report

CONTENDERS = ("torch eager", "ember", "torch.compile", "onnxruntime")


def write_report(results, gemm_rows, peak, args, wall, dynamic_rows=()):
    RESULTS.mkdir(parents=True, exist_ok=True)
    h = target.host()
    feats = ", ".join(f for f in ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "amx_tile")
                      if f in h["flags"])
    lines = ["# Ember benchmark suite", "",
             f"`{Path(sys.executable).name} benchmarks/bench_suite.py {' '.join(sys.argv[1:])}` on "
             f"{h['cpu'] or platform.processor()} ({os.cpu_count()} cores; {feats}); torch {torch.__version__} "
             f"({torch.get_num_threads()} threads), onnxruntime {_version('onnxruntime')}, "
             f"ember {ember.__version__}. Medians of interleaved runs (every contender once per "
             f"round; worker threads sleep after a short spin: GOMP_SPINCOUNT=1000, ONNX Runtime "
             f"allow_spinning=0). The machine is shared: load average {args.load_before} at the start, "
             f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end (on {os.cpu_count()} cores); "
             f"wall time {wall / 60:.1f} min.", "",
             "| model | " + " | ".join(CONTENDERS) + " | ember vs eager | ember vs best other | "
             "ember GFLOP/s (of peak) | ember max abs err |",
             "|---|" + "---|" * (len(CONTENDERS) + 4)]
    top = max(peak.values()) if peak else None
    best_ratios = []
    for name, r in results.items():
        t = r["time"]
        cells = []
        for c in CONTENDERS:
            if c in t:
                cells.append(fmt_time(t[c]["median"]))
            else:
                cells.append("failed" if c in r["errors"] else "—")
        e = t.get("ember", {}).get("median")
        others = [t[c]["median"] for c in CONTENDERS if c != "ember" and c in t]
        vs_eager = f"{t['torch eager']['median'] / e:.2f}x" if e else "—"
        vs_best = f"{min(others) / e:.2f}x" if e and others else "—"
        if e and others:
            best_ratios.append(min(others) / e)
        rate = r.get("gflop", 0) / e if e else 0
        of_peak = f"{rate:.1f}" + (f" ({rate / top:.0%})" if top else "") if rate >= 0.05 else "—"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {vs_eager} | {vs_best} | {of_peak} | "
                     f"{r['err'].get('ember', float('nan')):.1e} |")
    lines += ["", "Ratios are time(other) / time(ember): above 1 means Ember is faster."]
    if best_ratios:
        geo = float(np.exp(np.mean(np.log(best_ratios))))
        lines += [f"Geometric mean of ember vs best other over {len(best_ratios)} models: **{geo:.2f}x**."]
    lines += ["GFLOP/s counts the GEMM-like ops (matmul, linear, conv, attention; ember/ir/cost.py) "
              "over Ember's median time; the peak is the all-threads FMA peak below. They count the work "
              "as written: ResNet-18's 3x3 stride-1 convolutions run as Winograd (fewer multiplies), and "
              "MiniLM's inputs are short sentences padded to 128 tokens, whose padded keys Ember's attention "
              "skips (attention is about 5% of MiniLM's count)."]
    notes = [(n, r) for n, r in results.items() if r["errors"]]
    if notes:
        lines += ["", "Failures:", ""]
        for n, r in notes:
            for c, e in r["errors"].items():
                lines.append(f"- {n}, {c}: {e}")
    comp = [f"{n}: ember {r['notes'].get('ember compile', 0):.1f} s" +
            (f", inductor {r['notes']['inductor compile']:.1f} s" if "inductor compile" in r["notes"] else "")
            for n, r in results.items()]
    lines += ["", "Compile times (first build, Ember's disk cache may already hold it): " + "; ".join(comp) + "."]
    profiled = [(n, r["profile"]) for n, r in results.items() if r.get("profile")]
    if profiled:
        lines += ["", "## Where Ember's time goes", "",
                  "`compiled.profile(...)`: each kernel of the native call timed (medians), summed by form; "
                  "the slowest kernel with its share and GFLOP/s.", "",
                  "| model | kernels | by form | slowest kernel |", "|---|---|---|---|"]
        for name, p in profiled:
            total = p.kernel_seconds or 1.0
            forms = ", ".join(f"{f} {100 * sec / total:.0f}%" for f, sec in p.by_form().items())
            k = p.top(1)[0] if p.kernels else None
            slow = "—" if k is None else f"{k.label} ({100 * k.seconds / total:.0f}%" + \
                (f", {k.gflops:.0f} GFLOP/s)" if k.gflops else ")")
            lines.append(f"| {name} | {len(p.kernels)} | {forms} | {slow} |")
    if dynamic_rows:
        lines += ["", "## Dynamic shapes", "",
                  "The same model compiled for the example's shapes and compiled once for every size "
                  "(the dims below symbolic), both run on the example, interleaved; medians.", "",
                  "| model | dynamic inputs | static | dynamic | dynamic / static | kernels (static, dynamic) "
                  "| max abs diff |", "|---|---|---|---|---|---|---|"]
        for name, shape, ts, td, ks, kd, err in dynamic_rows:
            lines.append(f"| {name} | {shape} | {fmt_time(ts)} | {fmt_time(td)} | {td / ts:.3f} | {ks}, {kd} | "
                         f"{err:.1e} |")
    if gemm_rows:
        lines += ["", "## GEMM (x[M,K] @ W[K,N], W constant)", "",
                  "| shape | M | N | K | ember GFLOP/s | torch.mm GFLOP/s | ratio | max abs err |",
                  "|---|---|---|---|---|---|---|---|"]
        for label, m, n, k, e, p, err in gemm_rows:
            lines.append(f"| {label} | {m} | {n} | {k} | {e:.1f} | {p:.1f} | {e / p:.2f}x | {err:.1e} |")
    if peak:
        lanes = 16 if "avx512f" in h["flags"] else 8   # what PEAK_C compiles to under -march=native
        lines += ["", f"Machine FMA peak (register-resident {lanes}-wide FMA loop in C): " +
                  ", ".join(f"{t} thread{'s' if t > 1 else ''}: {g:.1f} GFLOP/s" for t, g in peak.items()) + "."]
    print("\n".join(lines))
    if args.only:  # a partial run prints its table; the saved results stay the full suite's
        return
    md = RESULTS / "suite.md"
    md.write_text("\n".join(lines) + "\n")
    print(f"wrote {md}")
    _chart(results, gemm_rows, peak)


def _chart(results, gemm_rows, peak):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install -r requirements-dev.txt)")
        return
    fig, axes = plt.subplots(1, 2 if gemm_rows else 1, figsize=(16 if gemm_rows else 10, 6))
    axes = np.atleast_1d(axes)
    ax = axes[0]
    names = list(results)
    width = 0.2
    for j, c in enumerate(CONTENDERS):
        vals = []
        for n in names:
            t = results[n]["time"]
            vals.append(t["torch eager"]["median"] / t[c]["median"] if c in t else 0)
        ax.bar(np.arange(len(names)) + (j - 1.5) * width, vals, width, label=c)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("speed-up over PyTorch eager (higher is better)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Models (median latency, interleaved)")
    if gemm_rows:
        ax = axes[1]
        labels = [r[0] for r in gemm_rows]
        x = np.arange(len(labels))
        ax.bar(x - 0.2, [r[4] for r in gemm_rows], 0.4, label="ember")
        ax.bar(x + 0.2, [r[5] for r in gemm_rows], 0.4, label="torch.mm")
        if peak:
            ax.axhline(max(peak.values()), color="r", ls="--", label="FMA peak (all cores)")
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("GFLOP/s")
        ax.legend()
        ax.set_title("GEMM, constant weight")
    fig.tight_layout()
    png = RESULTS / "suite.png"
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


def _version(mod):
    try:
        return __import__(mod).__version__
    except Exception:
        return "n/a"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds, small GEMMs, no inductor, 5 models")
    ap.add_argument("--rounds", type=int, default=2000, help="rounds for the tiny model (others: / 20)")
    ap.add_argument("--seconds", type=float, default=12.0, help="time cap per model's measurement")
    ap.add_argument("--gemm-seconds", type=float, default=4.0)
    ap.add_argument("--inductor-budget", type=float, default=240.0,
                    help="seconds of torch.compile compile time, summed, before it is skipped")
    ap.add_argument("--no-inductor", action="store_true")
    ap.add_argument("--only", default="", help="substring of the model names to run")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.gemm_seconds, args.no_inductor = 400, 4.0, 2.0, True
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    np.random.seed(0)
    start = time.perf_counter()
    args.load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    budget = {"inductor": args.inductor_budget}
    results = {}
    all_cases = cases(args.quick)
    for name, build in all_cases:
        if args.only and args.only not in name:
            continue
        try:
            results[name] = bench_model(name, build, args, budget)
        except Exception:
            traceback.print_exc()
            print(f"  {name}: could not run (see above)")
    dynamic_rows = bench_dynamic(all_cases, args)
    sq = (128, 512) if args.quick else (128, 512, 1024, 2048)
    shapes = [(n, n, n, f"{n}^3") for n in sq]
    shapes += [(128, 384, 384, "MiniLM qkv/out (s128)"), (128, 384, 1536, "MiniLM FFN up (s128)"),
               (128, 1536, 384, "MiniLM FFN down (s128)"), (128, 768, 768, "BERT-base proj (s128)"),
               (128, 768, 3072, "BERT-base FFN up (s128)"), (1024, 3072, 768, "BERT-base FFN down (b8 s128)"),
               (1, 1024, 1024, "GEMV 1x1024x1024")]
    print("\n== GEMM", flush=True)
    gemm_rows = bench_gemm([(m, k, n, lbl) for (m, k, n, lbl) in shapes], args) if not args.only else []
    peak = machine_peak() if not args.only else None
    write_report(results, gemm_rows, peak, args, time.perf_counter() - start, dynamic_rows)


if __name__ == "__main__":
    main()
