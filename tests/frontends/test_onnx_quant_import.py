"""Already-quantized ONNX models, made by ONNX Runtime's own quantization tool from a small
fp32 conv net, compiled by Ember and compared with ONNX Runtime on the same quantized model.

The tight comparison is with ONNX Runtime's graph optimizations off: then it runs each
QuantizeLinear/DequantizeLinear/integer op as the ONNX spec defines it, which is what Ember
compiles. With its optimizations on, ONNX Runtime fuses QDQ groups into int8 kernels that
requantize with their own rounding, so a value can move by a quantization step per layer;
that comparison gets a tolerance of a few output steps.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import ember  # noqa: E402
from ember.frontends.onnx import from_onnx  # noqa: E402

X_SHAPE = (2, 3, 8, 8)


def _fp32_model(path, with_add=True):
    """conv(3->8, pad 1) - relu - conv(8->16, stride 2) - relu - flatten - matmul (+ bias)."""
    rng = np.random.default_rng(0)

    def w(name, shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["f"]),
        helper.make_node("MatMul", ["f", "w3"], ["m" if with_add else "y"]),
    ]
    inits = [w("w1", (8, 3, 3, 3)), w("b1", (8,)), w("w2", (16, 8, 3, 3)), w("b2", (16,)),
             w("w3", (16 * 4 * 4, 10), 0.1)]
    if with_add:
        nodes.append(helper.make_node("Add", ["m", "b3"], ["y"]))
        inits.append(w("b3", (10,)))
    g = helper.make_graph(nodes, "small_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, X_SHAPE)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, (2, 10))], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(path))
    return str(path)


class _Calibration(quantization.CalibrationDataReader):
    def __init__(self):
        rng = np.random.default_rng(1)
        self.batches = iter([{"x": rng.standard_normal(X_SHAPE).astype(np.float32)} for _ in range(8)])

    def get_next(self):
        return next(self.batches, None)


def _quantized(tmp_path, kind):
    src = _fp32_model(tmp_path / "fp32.onnx", with_add=kind != "qoperator")
    dst = str(tmp_path / f"{kind}.onnx")
    q = quantization
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "dynamic":
            q.quantize_dynamic(src, dst)
        elif kind == "qdq":
            q.quantize_static(src, dst, _Calibration(), quant_format=q.QuantFormat.QDQ)
        elif kind == "qdq_per_channel_s8":
            q.quantize_static(src, dst, _Calibration(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                              activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8)
        else:  # QOperator: QLinearConv / QLinearMatMul
            q.quantize_static(src, dst, _Calibration(), quant_format=q.QuantFormat.QOperator)
    return dst


def _ort_run(path, x, optimize: bool):
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _output_step(path) -> float:
    """The scale of the model's last DequantizeLinear (one step of the quantized output)."""
    m = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    return float(np.max(inits[dq[-1].input[1]])) if dq else 0.0


OPS = {
    "qdq": {"QuantizeLinear", "DequantizeLinear"},
    "qdq_per_channel_s8": {"QuantizeLinear", "DequantizeLinear"},
    "qoperator": {"QLinearConv", "QLinearMatMul"},
    "dynamic": {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"},
}


@pytest.mark.parametrize("kind", list(OPS))
def test_quantized_model_matches_onnxruntime(tmp_path, kind):
    path = _quantized(tmp_path, kind)
    assert OPS[kind] <= {n.op_type for n in onnx.load(path).graph.node}
    compiled = ember.compile(path)
    step = _output_step(path)
    for seed in (2, 3):
        x = np.random.default_rng(seed).standard_normal(X_SHAPE).astype(np.float32)
        got = compiled(x)
        # as the ONNX spec defines each op: the same values
        spec = _ort_run(path, x, optimize=False)
        if kind == "qoperator":  # ORT's QLinear kernels requantize in fixed point
            np.testing.assert_allclose(got, spec, atol=2 * step + 1e-6)
        else:
            np.testing.assert_allclose(got, spec, rtol=1e-5, atol=1e-5)
        # ORT's fused int8 kernels: within a few output steps
        fused = _ort_run(path, x, optimize=True)
        np.testing.assert_allclose(got, fused, atol=max(6 * step, 1e-4))


def test_qdq_constant_weights_are_folded_at_import(tmp_path):
    # DequantizeLinear of an int8 weight initializer is constant: it becomes an f32 constant
    # while importing, so the compiled graph holds no dequantize op for the weights
    g = from_onnx(_quantized(tmp_path, "qdq"))
    n_dq = sum(n.op == "dequantize_linear" for n in g.nodes)
    n_q = sum(n.op == "quantize_linear" for n in g.nodes)
    assert n_q >= 1 and n_dq == n_q  # only the activations' Q/DQ pairs stay


def _qdq_model(op, x_type, x_shape, params, attrs, out_type):
    """One Quantize/DequantizeLinear node; ``params`` are (name, array) constants."""
    inits = [numpy_helper.from_array(arr, name) for name, arr in params]
    node = helper.make_node(op, ["x"] + [name for name, _ in params], ["y"], **attrs)
    g = helper.make_graph([node], "q", [helper.make_tensor_value_info("x", x_type, x_shape)],
                          [helper.make_tensor_value_info("y", out_type, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize("case", ["per_axis_i8", "blocked_remainder", "u16", "scale_1_zp_scalar",
                                  "dq_f16_scale", "dq_blocked_i8"])
def test_qdq_variants_match_the_onnx_reference(case):
    from onnx.reference import ReferenceEvaluator
    rng = np.random.default_rng(4)
    F, U8, I8 = TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT8
    if case == "per_axis_i8":
        args = ("QuantizeLinear", F, (2, 3, 4), [("s", np.array([0.1, 0.02, 0.3], np.float32)),
                                                 ("z", np.array([0, -5, 7], np.int8))], {"axis": 1}, I8)
    elif case == "blocked_remainder":  # 5 along the axis in blocks of 2: the last block has 1
        args = ("QuantizeLinear", F, (3, 5), [("s", rng.uniform(0.01, 0.1, (3, 3)).astype(np.float32)),
                                              ("z", rng.integers(0, 255, (3, 3)).astype(np.uint8))],
                {"axis": 1, "block_size": 2}, U8)
    elif case == "u16":
        args = ("QuantizeLinear", F, (7,), [("s", np.array(0.001, np.float32)),
                                            ("z", np.array(30000, np.uint16))], {}, TensorProto.UINT16)
    elif case == "scale_1_zp_scalar":
        args = ("QuantizeLinear", F, (6,), [("s", np.array([0.05], np.float32)),
                                            ("z", np.array(128, np.uint8))], {}, U8)
    elif case == "dq_f16_scale":
        args = ("DequantizeLinear", U8, (4, 3), [("s", np.array(0.0625, np.float16)),
                                                 ("z", np.array(100, np.uint8))], {}, TensorProto.FLOAT16)
    else:
        args = ("DequantizeLinear", I8, (4, 6), [("s", rng.uniform(0.01, 0.1, (2, 6)).astype(np.float32))],
                {"axis": 0, "block_size": 2}, F)
    model = _qdq_model(*args)
    if args[1] == F:
        x = (rng.standard_normal(args[2]) * 4).astype(np.float32)
        x.reshape(-1)[:2] = [0.025, -0.075]  # ties for the 0.05 and 0.1 scales
    else:
        info = np.iinfo(np.uint8 if args[1] == U8 else np.int8)
        x = rng.integers(info.min, info.max, args[2], endpoint=True).astype(info.dtype)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    got = ember.compile(model)(x)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
