"""An already-quantized ONNX model (QDQ) run by Ember and by ONNX Runtime, and its fp32 original.

MLP 4 x Linear(1024, 1024) + ReLU, batch 64, as ONNX Gemm nodes; quantized by ONNX Runtime's
``quantize_static`` (QDQ format, per-channel int8 weights, u8 activations). Contenders, on
the same inputs, interleaved medians (ember.timing.measure):

* Ember on the QDQ file (``fuse_qdq`` turns the QDQ groups into ``quant_linear``);
* Ember on the QDQ file without ``fuse_qdq`` (the simulated fp32 path it replaces);
* ONNX Runtime on the same QDQ file (all graph optimizations: its fused int8 kernels);
* Ember and ONNX Runtime fp32 on the original file.

Writes benchmarks/results/qdq.md. Run under the shared lock (noisy shared machine):
    flock /tmp/ember-bench.lock python benchmarks/bench_qdq.py
"""
from __future__ import annotations

import platform
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime import quantization as q

import ember
import ember.passes
from ember.timing import measure

DIM, LAYERS, BATCH = 1024, 4, 64


def fp32_mlp(path: str) -> str:
    rng = np.random.default_rng(0)
    nodes, inits, cur = [], [], "x"
    for i in range(LAYERS):
        inits += [numpy_helper.from_array((rng.standard_normal((DIM, DIM)) / np.sqrt(DIM)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array((rng.standard_normal(DIM) * 0.1).astype(np.float32), f"b{i}")]
        nodes.append(helper.make_node("Gemm", [cur, f"w{i}", f"b{i}"], [f"g{i}"], transB=1))
        nodes.append(helper.make_node("Relu", [f"g{i}"], ["y" if i == LAYERS - 1 else f"h{i}"]))
        cur = f"h{i}"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (BATCH, DIM))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, (BATCH, DIM))], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


class Calibration(q.CalibrationDataReader):
    def __init__(self):
        rng = np.random.default_rng(1)
        self.batches = iter([{"x": rng.standard_normal((BATCH, DIM)).astype(np.float32)} for _ in range(4)])

    def get_next(self):
        return next(self.batches, None)


@contextmanager
def without_fuse_qdq():
    """-O2 minus fuse_qdq: the simulated dequantize -> fp32 GEMM -> quantize path."""
    saved = ember.passes.PIPELINES[2]
    ember.passes.PIPELINES[2] = [p for p in saved if p[0] != "fuse_qdq"]
    try:
        yield
    finally:
        ember.passes.PIPELINES[2] = saved


def output_step(path: str) -> float:
    m = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    return float(inits[[n for n in m.graph.node if n.op_type == "DequantizeLinear"][-1].input[1]])


def one_layer_table() -> str:
    """Where the time goes: one 64 x 1024 x 1024 layer, each GEMM route against fp32."""
    from ember.ir import parse
    rng = np.random.default_rng(3)
    wq = rng.integers(-127, 128, (DIM, DIM)).astype(np.int8)
    ws = rng.uniform(0.001, 0.01, DIM).astype(np.float32)
    w = (wq.astype(np.float32) * ws[:, None]).astype(np.float32)
    head = f"%wq = const : i8[{DIM}, {DIM}]\n  %ws = const : f32[{DIM}]\n  %w = const : f32[{DIM}, {DIM}]"
    graphs = {
        "fp32 linear": f"%0 = linear(%x, %w) : f32[{BATCH}, {DIM}]",
        "quant_linear, u8 codes (QDQ: s16 route)":
            f"%q = quantize_linear(%x, %sx, %zx) {{axis=1}} : u8[{BATCH}, {DIM}]\n"
            f"  %0 = quant_linear(%q, %sx, %zx, %wq, %ws) : f32[{BATCH}, {DIM}]",
        "quant_linear, 7-bit codes (dynamic reduce_range: u7 route)":
            f"%q, %s, %z = dynamic_quantize(%x) {{per_row=true, dtype=u8, reduce_range=true}} : "
            f"u8[{BATCH}, {DIM}], f32[{BATCH}, 1], u8[{BATCH}, 1]\n"
            f"  %0 = quant_linear(%q, %s, %z, %wq, %ws) : f32[{BATCH}, {DIM}]",
    }
    compiled = {}
    for name, body in graphs.items():
        text = (f"graph g(%x: f32[{BATCH}, {DIM}]) -> (f32[{BATCH}, {DIM}]) {{\n  %sx = const [0.03] : f32[]\n"
                f"  %zx = const [128] : u8[]\n  {head}\n  {body}\n  return %0\n}}")
        compiled[name] = ember.compile(parse(text, {"wq": wq, "ws": ws, "w": w}))
    x = (rng.standard_normal((BATCH, DIM)) * 3).astype(np.float32)
    t = measure({k: (lambda c=c: c.run_numpy([x])) for k, c in compiled.items()}, rounds=200, max_seconds=20)
    macs = BATCH * DIM * DIM
    lines = ["| one layer 64x1024x1024 | median ms | p10 ms | GMAC/s (median) |", "|---|---|---|---|"]
    for name, r in t.items():
        lines.append(f"| {name} | {r['median'] * 1e3:.3f} | {r['p10'] * 1e3:.3f} | {macs / r['median'] / 1e9:.1f} |")
    return "\n".join(lines)


def main():
    tmp = Path(tempfile.mkdtemp())
    src = fp32_mlp(str(tmp / "mlp.onnx"))
    qdq = str(tmp / "mlp_qdq.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q.quantize_static(src, qdq, Calibration(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                          activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8)
    ember_q = ember.compile(qdq)
    ops = [n.op for n in ember_q.graph.nodes]
    assert ops.count("quant_linear") == LAYERS, ops
    with without_fuse_qdq():
        ember_sim = ember.compile(qdq)
    ember_fp = ember.compile(src)
    ort_q = ort.InferenceSession(qdq, providers=["CPUExecutionProvider"])
    ort_fp = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ort_spec = ort.InferenceSession(qdq, so, providers=["CPUExecutionProvider"])

    x = np.random.default_rng(2).standard_normal((BATCH, DIM)).astype(np.float32)
    feed = {"x": x}
    runs = {
        "Ember QDQ (int8, fuse_qdq)": lambda: ember_q.run_numpy([x]),
        "Ember QDQ simulated (no fuse_qdq)": lambda: ember_sim.run_numpy([x]),
        "ONNX Runtime QDQ": lambda: ort_q.run(None, feed),
        "Ember fp32": lambda: ember_fp.run_numpy([x]),
        "ONNX Runtime fp32": lambda: ort_fp.run(None, feed),
    }
    t = measure(runs, rounds=400, warmup=5, max_seconds=60)

    step = output_step(qdq)
    spec = ort_spec.run(None, feed)[0]
    fp = ort_fp.run(None, feed)[0]
    outs = {"Ember QDQ (int8, fuse_qdq)": ember_q.run_numpy([x])[0],
            "Ember QDQ simulated (no fuse_qdq)": ember_sim.run_numpy([x])[0],
            "ONNX Runtime QDQ": ort_q.run(None, feed)[0], "Ember fp32": ember_fp.run_numpy([x])[0],
            "ONNX Runtime fp32": fp}
    base = t["Ember fp32"]["median"]
    lines = [("| contender | median ms | p10 ms | p90 ms | vs Ember fp32 | max diff vs ONNX spec (output steps) | "
              "outputs off the spec |"), "|---|---|---|---|---|---|---|"]
    for name, r in t.items():
        d = np.abs(outs[name] - spec)
        lines.append(f"| {name} | {r['median'] * 1e3:.3f} | {r['p10'] * 1e3:.3f} | {r['p90'] * 1e3:.3f} | "
                     f"{base / r['median']:.2f}x | {d.max() / step:.2f} | {np.mean(d > step / 2):.4%} |")
    table = "\n".join(lines)
    print(table)
    layer = one_layer_table()
    print(layer)
    out = Path(__file__).resolve().parent / "results" / "qdq.md"
    out.write_text(
        "# Already-quantized ONNX (QDQ) vs fp32\n\n"
        f"MLP {LAYERS} x Linear({DIM}, {DIM}) + ReLU, batch {BATCH}; QDQ by onnxruntime "
        f"{ort.__version__} `quantize_static` (per-channel s8 weights, u8 activations). "
        f"Interleaved medians over {t['Ember fp32']['runs']} rounds, one process, "
        f"{platform.machine()}, 2 shared cores. 'ONNX spec' is ONNX Runtime with graph optimizations "
        "off (each QuantizeLinear/DequantizeLinear as the spec defines it); an output step is the "
        f"output scale ({step:.4g}).\n\n"
        "Command: `flock /tmp/ember-bench.lock python benchmarks/bench_qdq.py`\n\n" + table + "\n\n"
        "Where the time goes (the quantize + int16 widening + GEMM of one layer, and fp32):\n\n" + layer + "\n")


if __name__ == "__main__":
    main()
