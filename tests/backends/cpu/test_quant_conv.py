"""quant_conv2d through the int8 GEMM (im2col + QGemm, lower/rules_quant.py), against the IR op's
numpy reference: odd channel counts and spatial sizes, kernels 1/3, stride, padding (the zero
point stands for 0), dilation, per-tensor / per-channel weight scales, bias, u8 and s8 codes."""
import numpy as np
import pytest

import ember
from ember.ir import Graph, TensorType, dtypes, sym
from ember.ir.ops.quant import _qc_ref

rng = np.random.default_rng(5)
B = sym("b")

# (C, O, H, W, k, stride, padding, dilation)
CASES = [
    (1, 1, 1, 1, 1, 1, 0, 1),
    (3, 5, 5, 5, 3, 1, 1, 1),
    (7, 16, 13, 13, 3, 2, 1, 1),
    (3, 16, 13, 5, 3, 1, 0, 2),
    (7, 5, 5, 13, 1, 2, 0, 1),
    (1, 16, 13, 13, 3, 2, 1, 2),
    (7, 1, 5, 5, 3, 1, 1, 2),
    (3, 5, 1, 1, 3, 1, 1, 1),
    (7, 16, 13, 13, 1, 1, 1, 1),
    (3, 16, 5, 5, 3, 2, 0, 1),
    # even K = C*k*k: im2col writes the int16 GEMM operand directly (one pass)
    (2, 5, 13, 5, 3, 1, 1, 1),
    (8, 16, 13, 13, 3, 2, 1, 2),
    (4, 1, 5, 5, 1, 2, 0, 1),
]


def build(C, O, k, attrs, xdt, per_channel, bias, zp):
    g = Graph()
    x = g.add_input("x", TensorType(xdt, (B, C, H_, W_)))
    lo, hi = (0, 256) if xdt is dtypes.u8 else (-128, 128)
    s = g.add_const(np.float32(0.037), "s")
    z = g.add_const(np.asarray(zp, xdt.np), "z")
    w = g.add_const(rng.integers(-127, 128, (O, C, k, k)).astype(np.int8), "w")
    wsv = rng.uniform(0.01, 0.1, (O,) if per_channel else ()).astype(np.float32)
    ins = [x, s, z, w, g.add_const(wsv, "ws")]
    if bias:
        ins.append(g.add_const(rng.normal(size=(O,)).astype(np.float32), "bias"))
    g.outputs = [g.op("quant_conv2d", ins, attrs)]
    return g, (lo, hi)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("variant", [(dtypes.u8, True, True, 113), (dtypes.i8, False, False, 0),
                                     (dtypes.i8, True, False, -9)])
def test_quant_conv2d_gemm_exact(case, variant):
    global H_, W_
    C, O, H_, W_, k, st, pad, dil = case
    xdt, per_channel, bias, zp = variant
    attrs = {"stride": (st, st), "padding": (pad, pad), "dilation": (dil, dil)}
    g, (lo, hi) = build(C, O, k, attrs, xdt, per_channel, bias, zp)
    c = ember.compile(g)
    assert "int8 GEMM, route" in c.source          # the GEMM, not the reduction
    node = [m for m in g.nodes if m.op == "quant_conv2d"][0]
    cvals = [v.data for v in node.inputs[1:]]
    for batch in (1, 3):
        xq = rng.integers(lo, hi, (batch, C, H_, W_)).astype(xdt.np)
        want = _qc_ref([xq] + cvals, {**attrs, "groups": 1})
        got = c.run_numpy([xq])[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=f"{case} {variant} batch={batch}")


def test_relu_consumer_and_grouped_fallback():
    g = Graph()
    x = g.add_input("x", TensorType(dtypes.u8, (2, 4, 9, 8)))
    s, z = g.add_const(np.float32(0.03), "s"), g.add_const(np.uint8(100), "z")
    w = g.add_const(rng.integers(-127, 128, (6, 4, 3, 3)).astype(np.int8), "w")
    ws = g.add_const(rng.uniform(0.01, 0.1, (6,)).astype(np.float32), "ws")
    y = g.op("quant_conv2d", [x, s, z, w, ws], {"padding": (1, 1)})
    g.outputs = [g.op("relu", [y])]
    c = ember.compile(g)
    assert "int8 GEMM, route" in c.source
    xq = rng.integers(0, 256, (2, 4, 9, 8)).astype(np.uint8)
    want = np.maximum(_qc_ref([xq, np.float32(0.03), np.uint8(100), w.data, ws.data],
                              {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 1}), 0)
    np.testing.assert_allclose(c.run_numpy([xq])[0], want, rtol=1e-6, atol=1e-6)
