"""fuse_qdq: QDQ groups (dequantize -> linear/conv2d) become the int8 ops, with the same values.

Tolerances, from the pass's docstring: without output requantization the int8 result and
the simulated fp32 one differ only by fp32 accumulation rounding, bounded here by
K * 2**-23 * sum_k |X_k W_k| per output; with a requantizing quantize_linear that can move
a code by one step where a value sits on a rounding tie, never more.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from irtext import assert_pass

from ember.ir import interpret, parse
from ember.passes import fuse_qdq
from ember.passes.fuse_qdq import int8_weight

EPS = 2.0 ** -23


def _int8(rng, shape, per_channel=True, qmax=127):
    """An f32 weight that is exactly dequantize(wq, scale): what the importer hands the pass."""
    wq = rng.integers(-qmax, qmax + 1, shape).astype(np.int8)
    wq.reshape(shape[0], -1)[:, 0] = qmax  # symmetric quantizers map max|w| to qmax
    s = rng.uniform(0.001, 0.02, shape[0] if per_channel else ()).astype(np.float32)
    sb = s.reshape((-1,) + (1,) * (len(shape) - 1)) if per_channel else s
    return (wq.astype(np.float32) * sb).astype(np.float32), wq, s


def _linear_graph(rows, k, n, dt, bias, requant):
    b = ", %b" if bias else ""
    out = f"""
      %3 = quantize_linear(%2, %sy, %zy) {{axis=1}} : {dt}[{rows}, {n}]
      %4 = dequantize_linear(%3, %sy, %zy) {{axis=1}} : f32[{rows}, {n}]
      return %4""" if requant else "\n      return %2"
    return f"""graph g(%x: f32[{rows}, {k}]) -> (f32[{rows}, {n}]) {{
      %sx = const [0.03125] : f32[]
      %zx = const [{3 if dt == 'i8' else 128}] : {dt}[]
      %sy = const [0.05] : f32[]
      %zy = const [{-5 if dt == 'i8' else 120}] : {dt}[]
      %w = const : f32[{n}, {k}]
      %b = const : f32[{n}]
      %0 = quantize_linear(%x, %sx, %zx) {{axis=1}} : {dt}[{rows}, {k}]
      %1 = dequantize_linear(%0, %sx, %zx) {{axis=1}} : f32[{rows}, {k}]
      %2 = linear(%1, %w{b}) : f32[{rows}, {n}]{out}
    }}"""


def _check(g, before, x, k, requant, step=0.05):
    want, got = interpret(before, [x])[0], interpret(g, [x])[0]
    if requant:  # one output code at most, and only on rounding ties (rare)
        diff = np.abs(got - want)
        assert diff.max() <= step * 1.001
        assert np.mean(diff > 0) < 0.01
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=float(k * EPS * np.abs(want).max() + 1e-6))


def _vals(a) -> str:
    return "[" + ", ".join(repr(float(v)) for v in a.reshape(-1)) + "]"


def test_linear_becomes_quant_linear():
    rng = np.random.default_rng(0)
    w, wq, s = _int8(rng, (4, 8))
    consts = {"w": w, "b": np.float32([0.5, -1.25, 2.0, 0.0])}
    assert_pass(fuse_qdq, _linear_graph("n", 8, 4, "u8", True, False), f"""
    graph g(%x: f32[n, 8]) -> (f32[n, 4]) {{
      %sx = const [0.03125] : f32[]
      %zx = const [128] : u8[]
      %b = const {_vals(consts["b"])} : f32[4]
      %wq = const : i8[4, 8]
      %ws = const {_vals(s)} : f32[4]
      %0 = quantize_linear(%x, %sx, %zx) {{axis=1}} : u8[n, 8]
      %1 = quant_linear(%0, %sx, %zx, %wq, %ws, %b) : f32[n, 4]
      return %1
    }}""", consts)
    g = fuse_qdq(parse(_linear_graph("n", 8, 4, "u8", True, False), consts))
    ql = next(n for n in g.nodes if n.op == "quant_linear")
    np.testing.assert_array_equal(ql.inputs[3].data, wq)
    np.testing.assert_array_equal(ql.inputs[4].data, s)


@pytest.mark.parametrize("rows,k,n", [(1, 1, 1), (3, 127, 5), (127, 3, 127), (2, 64, 1)])
@pytest.mark.parametrize("dt", ["u8", "i8"])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("requant", [True, False])
def test_linear_same_values(rows, k, n, dt, per_channel, bias, requant):
    rng = np.random.default_rng(rows * 1000 + k + n)
    w, _, _ = _int8(rng, (n, k), per_channel)
    consts = {"w": w, "b": rng.standard_normal(n).astype(np.float32)}
    before = parse(_linear_graph(rows, k, n, dt, bias, requant), consts)
    g = fuse_qdq(before.clone())
    ops = [m.op for m in g.nodes]
    assert ops.count("quant_linear") == 1 and "linear" not in ops
    assert ("dequantize_linear" in ops) == requant
    for seed in range(3):  # x * 3: many codes saturate, the full 8-bit range is used
        x = (np.random.default_rng(seed).standard_normal((rows, k)) * 3).astype(np.float32)
        _check(g, before, x, k, requant)


def test_conv2d_becomes_quant_conv2d():
    rng = np.random.default_rng(1)
    for per_channel, groups, bias in ((True, 1, True), (False, 1, False), (True, 3, True)):
        w, wq, _ = _int8(rng, (6, 6 // groups, 3, 3), per_channel)
        consts = {"w": w, "b": rng.standard_normal(6).astype(np.float32)}
        b = ", %b" if bias else ""
        before = parse(f"""graph g(%x: f32[2, 6, 7, 5]) -> (f32[2, 6, 4, 3]) {{
          %sx = const [0.02] : f32[1]
          %zx = const [7] : u8[1]
          %w = const : f32[6, {6 // groups}, 3, 3]
          %b = const : f32[6]
          %0 = quantize_linear(%x, %sx, %zx) {{axis=1}} : u8[2, 6, 7, 5]
          %1 = dequantize_linear(%0, %sx, %zx) {{axis=1}} : f32[2, 6, 7, 5]
          %2 = conv2d(%1, %w{b}) {{stride=[2, 2], padding=[1, 1], dilation=[1, 1], groups={groups}}} : f32[2, 6, 4, 3]
          return %2
        }}""", consts)
        assert "quant_conv2d" not in [m.op for m in fuse_qdq(before.clone()).nodes]  # FUSE_CONV off
        g = fuse_qdq(before.clone(), conv=True)
        assert [m.op for m in g.nodes] == ["quantize_linear", "quant_conv2d"]
        qc = g.nodes[1]
        assert qc.attrs["groups"] == groups and qc.attrs["stride"] == (2, 2)
        np.testing.assert_array_equal(qc.inputs[3].data, wq)
        x = np.random.default_rng(2).standard_normal((2, 6, 7, 5)).astype(np.float32)
        _check(g, before, x, 9 * 6 // groups, False)


@pytest.mark.parametrize("per_channel", [True, False])
def test_weight_given_as_dequantize_of_constant(per_channel):
    rng = np.random.default_rng(3)
    _, wq, s = _int8(rng, (5, 7), per_channel)
    stype, axis = ("f32[5]", 0) if per_channel else ("f32[]", 1)  # axis means nothing per tensor
    text = f"""graph g(%x: f32[3, 7]) -> (f32[3, 5]) {{
      %sx = const [0.03] : f32[]
      %zx = const [2] : i8[]
      %wq = const : i8[5, 7]
      %ws = const : {stype}
      %w = dequantize_linear(%wq, %ws) {{axis={axis}}} : f32[5, 7]
      %0 = quantize_linear(%x, %sx, %zx) {{axis=1}} : i8[3, 7]
      %1 = dequantize_linear(%0, %sx, %zx) {{axis=1}} : f32[3, 7]
      %2 = linear(%1, %w) : f32[3, 5]
      return %2
    }}"""
    before = parse(text, {"wq": wq, "ws": s})
    g = fuse_qdq(before.clone())
    assert [m.op for m in g.nodes] == ["quantize_linear", "quant_linear"]
    _check(g, before, rng.standard_normal((3, 7)).astype(np.float32), 7, False)


def test_dequantize_without_zero_point():
    rng = np.random.default_rng(7)
    w, _, _ = _int8(rng, (3, 5))
    before = parse("""graph g(%x: f32[4, 5]) -> (f32[4, 3]) {
      %sx = const [0.02] : f32[1]
      %zx = const [0] : i8[1]
      %w = const : f32[3, 5]
      %0 = quantize_linear(%x, %sx, %zx) {axis=1} : i8[4, 5]
      %1 = dequantize_linear(%0, %sx) {axis=1} : f32[4, 5]
      %2 = linear(%1, %w) : f32[4, 3]
      return %2
    }""", {"w": w})
    g = fuse_qdq(before.clone())
    ql = g.nodes[-1]
    assert ql.op == "quant_linear" and ql.inputs[1].type.rank == 0 and int(ql.inputs[2].data) == 0
    _check(g, before, rng.standard_normal((4, 5)).astype(np.float32), 5, False)


def test_float_weights_that_are_not_int8_stay_fp32():
    rng = np.random.default_rng(4)
    consts = {"w": rng.standard_normal((4, 8)).astype(np.float32), "b": np.zeros(4, np.float32)}
    g = fuse_qdq(parse(_linear_graph(2, 8, 4, "u8", True, False), consts))
    assert "quant_linear" not in [m.op for m in g.nodes]
    # one weight off the int8 grid by one f32 ulp is enough to refuse
    w, _, _ = _int8(rng, (4, 8))
    w[2, 3] = np.nextafter(w[2, 3], np.float32(1))
    assert int8_weight(w) is None


def test_per_channel_activation_scale_is_left_alone():
    rng = np.random.default_rng(5)
    w, _, _ = _int8(rng, (4, 3))
    g = fuse_qdq(parse("""graph g(%x: f32[2, 3]) -> (f32[2, 4]) {
      %sx = const : f32[3]
      %zx = const : u8[3]
      %w = const : f32[4, 3]
      %0 = quantize_linear(%x, %sx, %zx) {axis=1} : u8[2, 3]
      %1 = dequantize_linear(%0, %sx, %zx) {axis=1} : f32[2, 3]
      %2 = linear(%1, %w) : f32[2, 4]
      return %2
    }""", {"sx": np.float32([0.1, 0.2, 0.3]), "zx": np.uint8([1, 2, 3]), "w": w}))
    assert "quant_linear" not in [m.op for m in g.nodes]


def test_requantize_with_same_params_is_identity():
    # Flatten between two quantized layers: Q -> DQ -> reshape -> Q (same s, z) is reshape(q)
    assert_pass(fuse_qdq, """graph g(%x: f32[2, 3, 4]) -> (f32[2, 12]) {
      %s = const [0.0123] : f32[]
      %z = const [-3] : i8[]
      %0 = quantize_linear(%x, %s, %z) {axis=1} : i8[2, 3, 4]
      %1 = dequantize_linear(%0, %s, %z) {axis=1} : f32[2, 3, 4]
      %2 = reshape(%1) {shape=[2, 12]} : f32[2, 12]
      %3 = quantize_linear(%2, %s, %z) {axis=1} : i8[2, 12]
      %4 = dequantize_linear(%3, %s, %z) {axis=1} : f32[2, 12]
      return %4
    }""", """graph g(%x: f32[2, 3, 4]) -> (f32[2, 12]) {
      %s = const [0.012299999594688416] : f32[]
      %z = const [-3] : i8[]
      %0 = quantize_linear(%x, %s, %z) {axis=1} : i8[2, 3, 4]
      %1 = reshape(%0) {shape=[2, 12]} : i8[2, 12]
      %2 = dequantize_linear(%1, %s, %z) {axis=1} : f32[2, 12]
      return %2
    }""")
    # exhaustively: every code of both 8-bit types, over a wide range of scales
    from ember.ir.ops.quant import dequantize_ref, quantize_ref
    for dt in (np.uint8, np.int8):
        q = np.arange(np.iinfo(dt).min, np.iinfo(dt).max + 1).astype(dt)
        for s in np.float32(np.geomspace(1e-29, 1e29, 997)):
            for z in (np.iinfo(dt).min, 0, 77, np.iinfo(dt).max):
                z = np.asarray(z, dt)
                np.testing.assert_array_equal(quantize_ref(dequantize_ref(q, s, z), s, z), q)


def test_requantize_with_other_params_stays():
    g = fuse_qdq(parse("""graph g(%x: f32[2, 12]) -> (f32[2, 12]) {
      %s = const [0.0123] : f32[]
      %s2 = const [0.02] : f32[]
      %z = const [-3] : i8[]
      %0 = quantize_linear(%x, %s, %z) {axis=1} : i8[2, 12]
      %1 = dequantize_linear(%0, %s, %z) {axis=1} : f32[2, 12]
      %2 = quantize_linear(%1, %s2, %z) {axis=1} : i8[2, 12]
      %3 = dequantize_linear(%2, %s2, %z) {axis=1} : f32[2, 12]
      return %3
    }""", {}))
    assert [n.op for n in g.nodes].count("quantize_linear") == 2


def test_int8_weight_recovers_scales():
    rng = np.random.default_rng(6)
    for per_channel in (True, False):
        for qmax in (127, 63):
            w, _, _ = _int8(rng, (9, 4, 3), per_channel, qmax)
            got = int8_weight(w)
            assert got is not None
            np.testing.assert_array_equal((got[0].astype(np.float32) *
                                           np.asarray(got[1]).reshape((-1, 1, 1) if got[1].ndim else ())), w)
    assert int8_weight(np.zeros((2, 3), np.float32)) is not None


# ------------------------------------------------------------------ end to end with ONNX Runtime

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")


def mlp_model(path, dims, batch):
    """Gemm (+ bias) - Relu - ... - Gemm, the layout torch.onnx.export gives nn.Linear."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    nodes, inits, cur = [], [], "x"
    for i in range(len(dims) - 1):
        inits += [numpy_helper.from_array((rng.standard_normal((dims[i + 1], dims[i])) / np.sqrt(dims[i]))
                                          .astype(np.float32), f"w{i}"),
                  numpy_helper.from_array((rng.standard_normal(dims[i + 1]) * 0.1).astype(np.float32), f"b{i}")]
        last = i == len(dims) - 2
        nodes.append(helper.make_node("Gemm", [cur, f"w{i}", f"b{i}"], ["y" if last else f"g{i}"], transB=1))
        if not last:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [f"h{i}"]))
            cur = f"h{i}"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (batch, dims[0]))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, (batch, dims[-1]))], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def cnn_model(path):
    """conv(3->8, pad 1) - relu - conv(8->16, stride 2) - relu - flatten - Gemm."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)

    def w(name, shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Flatten", ["r2"], ["f"]),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1)]
    inits = [w("w1", (8, 3, 3, 3)), w("b1", (8,)), w("w2", (16, 8, 3, 3)), w("b2", (16,)),
             w("w3", (10, 16 * 4 * 4), 0.1), w("b3", (10,))]
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 3, 8, 8))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, (2, 10))], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def quantize_qdq(src, dst, shape, activation="QUInt8"):
    """ONNX Runtime's static QDQ quantization, per-channel int8 weights."""
    q = quantization

    class Calibration(q.CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(1)
            self.batches = iter([{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.batches, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q.quantize_static(src, dst, Calibration(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                          activation_type=getattr(q.QuantType, activation), weight_type=q.QuantType.QInt8)
    return dst


def _output_step(path) -> float:
    from onnx import numpy_helper
    m = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    return float(inits[[n for n in m.graph.node if n.op_type == "DequantizeLinear"][-1].input[1]])


@pytest.mark.parametrize("model,shape,fuse_conv", [("mlp", (5, 24), False), ("cnn", (2, 3, 8, 8), False),
                                              ("cnn", (2, 3, 8, 8), True)])
@pytest.mark.parametrize("activation", ["QUInt8", "QInt8"])
def test_onnxruntime_qdq_model_runs_int8(tmp_path, monkeypatch, model, shape, fuse_conv, activation):
    import importlib

    import ember
    # the module, not the function that ember.passes re-exports under the same name
    monkeypatch.setattr(importlib.import_module("ember.passes.fuse_qdq"), "FUSE_CONV", fuse_conv)
    src = mlp_model(tmp_path / "f.onnx", (24, 33, 17, 7), 5) if model == "mlp" else cnn_model(tmp_path / "f.onnx")
    path = quantize_qdq(src, str(tmp_path / "q.onnx"), shape, activation)
    compiled = ember.compile(path)
    ops = [n.op for n in compiled.graph.nodes]
    # the layers run on int8 operands: no simulated dequantize -> fp32 GEMM left (convs only
    # with FUSE_CONV); the requantize after Flatten is gone too
    want = {"mlp": {"quant_linear": 3}, "cnn": {"quant_linear": 1, "quant_conv2d": 2 if fuse_conv else 0,
                                                "conv2d": 0 if fuse_conv else 2}}[model]
    assert {op: ops.count(op) for op in want} == want, ops
    assert "linear" not in ops and "matmul" not in ops
    assert ops.count("dequantize_linear") == 1 + want.get("conv2d", 0)  # the output's, the fp32 convs'
    step = _output_step(path)
    n_layers = 3
    sess = {opt: ort.InferenceSession(path, _options(opt), providers=["CPUExecutionProvider"]) for opt in (0, 1)}
    for seed in (2, 3):
        x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
        got = compiled(x)
        # the spec (ORT unoptimized, simulated fp32): the same codes but for rounding ties,
        # where a tie flipped in one layer moves later layers by a step each, hence 2 steps
        np.testing.assert_allclose(got, sess[0].run(None, {"x": x})[0], atol=2 * step + 1e-6)
        # ORT's own fused int8 kernels are looser: they requantize in fixed point (a step per
        # layer) and on AVX2 its u8 x s8 kernel uses vpmaddubsw, whose int16 pair sums saturate
        # for full-range u8 (ORT's documented reason for reduce_range); seen up to 7 steps here
        np.testing.assert_allclose(got, sess[1].run(None, {"x": x})[0], atol=(n_layers + 7) * step)


def _options(optimize):
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return so
