"""int8 kernels against their numpy references, and those references against ONNX semantics.

Integer results must be exact (int32 accumulation, no saturation); float outputs of the
requantizing epilogues are compared with the usual float tolerance.
"""
import numpy as np
import pytest

from ember.ir import Graph, TensorType, dtypes, interpret, sym
from ember.ir.ops.quant import dequantize_ref, quantize_ref
from ember.testing import check_against_reference

rng = np.random.default_rng(7)
M, K, N = sym("m"), sym("k"), sym("n")


def rint(dt, shape, lo=None, hi=None):
    info = np.iinfo(dt)
    return rng.integers(info.min if lo is None else lo, (info.max if hi is None else hi) + 1,
                        size=shape).astype(dt)


# odd and even sizes, 1s, and sizes past a SIMD width
SHAPES = [(1, 1, 1), (1, 17, 3), (3, 7, 5), (5, 64, 1), (17, 33, 9), (31, 129, 33), (64, 100, 31)]


@pytest.mark.parametrize("adt,bdt", [(np.uint8, np.int8), (np.int8, np.int8), (np.uint8, np.uint8)])
def test_matmul_integer_exact(adt, bdt):
    g = Graph()
    a = g.add_input("a", TensorType(dtypes.from_numpy(adt), (M, K)))
    b = g.add_input("b", TensorType(dtypes.from_numpy(bdt), (K, N)))
    g.outputs = [g.op("matmul_integer", [a, b])]
    sets = [[rint(adt, (m, k)), rint(bdt, (k, n))] for m, k, n in SHAPES]
    check_against_reference(g, sets)
    for (x, y), want in zip(sets, [interpret(g, s)[0] for s in sets]):  # the reference is exact
        np.testing.assert_array_equal(want, x.astype(np.int64) @ y.astype(np.int64))


def test_matmul_integer_zero_points_and_batch():
    g = Graph()
    a = g.add_input("a", TensorType(dtypes.u8, (2, M, K)))
    b = g.add_input("b", TensorType(dtypes.i8, (K, N)))
    za, zb = g.add_const(np.uint8(131), "za"), g.add_const(np.int8(-3), "zb")
    g.outputs = [g.op("matmul_integer", [a, b, za, zb])]
    sets = [[rint(np.uint8, (2, m, k)), rint(np.int8, (k, n))] for m, k, n in SHAPES[:5]]
    check_against_reference(g, sets)
    x, y = sets[2]
    want = (x.astype(np.int64) - 131) @ (y.astype(np.int64) + 3)
    np.testing.assert_array_equal(interpret(g, sets[2])[0], want)


def test_no_saturation_at_extremes():
    # every product is 255 * -128: int16 pair sums (pmaddubsw) would saturate; int32 must not
    g = Graph()
    a = g.add_input("a", TensorType(dtypes.u8, (M, K)))
    b = g.add_input("b", TensorType(dtypes.i8, (K, N)))
    g.outputs = [g.op("matmul_integer", [a, b])]
    for k in (2, 3, 1000, 4097):
        x, y = np.full((3, k), 255, np.uint8), np.full((k, 2), -128, np.int8)
        out = check_against_reference(g, [[x, y]]).run_numpy([x, y])[0]
        assert (out == -32640 * k).all()


def test_large_k_accumulates_in_int64():
    # K so large that an int32 accumulator overflows (255 * 127 * K > 2**31): the int8 GEMM
    # declines and the reduction accumulates in int64
    k = 70000
    g = Graph()
    a = g.add_input("a", TensorType(dtypes.u8, (M, k)))
    w = g.add_const(np.full((2, k), -127, np.int8), "w")
    one = g.add_const(np.float32(1.0), "one")
    zp = g.add_const(np.uint8(0), "zp")
    ws = g.add_const(np.ones(2, np.float32), "ws")
    g.outputs = [g.op("quant_linear", [a, one, zp, w, ws])]
    x = np.full((2, k), 255, np.uint8)
    got = check_against_reference(g, [[x]], rtol=1e-6).run_numpy([x])[0]
    np.testing.assert_allclose(got, np.float32(-255 * 127 * k), rtol=1e-6)


def _onnx_ref(op, *arrays, **attrs):
    pytest.importorskip("onnx")
    from onnx import helper
    from onnx.reference import ReferenceEvaluator
    names = [f"i{k}" for k in range(len(arrays))]
    node = helper.make_node(op, names, ["y"], **attrs)
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
           for n, a in zip(names, arrays)]
    graph = helper.make_graph([node], "g", ins, [helper.make_tensor_value_info("y", 0, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    return ReferenceEvaluator(model).run(None, dict(zip(names, arrays)))[0]


def _tie_values(scale, zp):
    # exact ties (k + 0.5) * scale, values that saturate both ways (1e6: the ONNX reference itself overflows int32 past 2**31), zeros and a random spread
    k = np.arange(-140, 140, dtype=np.float32)
    vals = np.concatenate([(k + 0.5) * scale, k * scale, [1e6, -1e6, 0.0, -0.0],
                           rng.normal(scale=60 * scale, size=500)]).astype(np.float32)
    return vals.reshape(1, -1)


@pytest.mark.parametrize("zdt,zp", [(np.uint8, 0), (np.uint8, 128), (np.uint8, 3), (np.int8, 0), (np.int8, -7)])
def test_quantize_linear_matches_onnx_and_compiles_exactly(zdt, zp):
    scale = np.float32(0.25)  # a power of two: exact ties survive any way of dividing
    x = _tie_values(scale, zp)
    z = np.array(zp, zdt)
    ref = quantize_ref(x, scale, z)
    np.testing.assert_array_equal(ref, _onnx_ref("QuantizeLinear", x, np.array(scale), z))
    assert ref.dtype == zdt
    g = Graph()
    xi = g.add_input("x", TensorType(dtypes.f32, (1, N)))
    g.outputs = [g.op("quantize_linear", [xi, g.add_const(scale, "s"), g.add_const(z, "z")])]
    check_against_reference(g, [[x], [x[:, :7]], [rng.normal(size=(1, 1001)).astype(np.float32) * 40]])


def test_quantize_linear_random_scale_and_per_axis():
    g = Graph()
    x = g.add_input("x", TensorType(dtypes.f32, (M, 3)))
    s = g.add_const(np.array([0.37, 0.011, 2.5], np.float32), "s")
    z = g.add_const(np.array([13, 0, 255], np.uint8), "z")
    g.outputs = [g.op("quantize_linear", [x, s, z], {"axis": 1})]
    sets = [[(rng.normal(size=(m, 3)) * 50).astype(np.float32)] for m in (1, 9, 4000)]
    check_against_reference(g, sets)
    np.testing.assert_array_equal(interpret(g, sets[1])[0],
                                  _onnx_ref("QuantizeLinear", sets[1][0], s.data, z.data, axis=1))


@pytest.mark.parametrize("zdt,zp", [(np.uint8, 128), (np.int8, -3)])
def test_dequantize_linear_matches_onnx(zdt, zp):
    q = rint(zdt, (4, 33))
    scale, z = np.float32(0.0173), np.array(zp, zdt)
    ref = dequantize_ref(q, scale, z)
    np.testing.assert_array_equal(ref, _onnx_ref("DequantizeLinear", q, np.array(scale), z))
    g = Graph()
    qi = g.add_input("q", TensorType(dtypes.from_numpy(zdt), (M, 33)))
    g.outputs = [g.op("dequantize_linear", [qi, g.add_const(scale, "s"), g.add_const(z, "z")])]
    check_against_reference(g, [[q], [q[:1]]])


@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("dt,rr", [(dtypes.u8, False), (dtypes.i8, False), (dtypes.u8, True)])
def test_dynamic_quantize_and_quant_linear(per_row, dt, rr):
    g = Graph()
    x = g.add_input("x", TensorType(dtypes.f32, (M, 37)))
    q, s, z = g.op("dynamic_quantize", [x], {"per_row": per_row, "dtype": dt, "reduce_range": rr})
    w = g.add_const(rint(np.int8, (11, 37), -127, 127), "w")
    ws = g.add_const(rng.uniform(0.01, 0.1, (11,)).astype(np.float32), "ws")
    b = g.add_const(rng.normal(size=(11,)).astype(np.float32), "b")
    g.outputs = [q, s, z, g.op("quant_linear", [q, s, z, w, ws, b])]
    xs = [rng.normal(size=(m, 37)).astype(np.float32) * 3 for m in (1, 5, 64)]
    xs.append(np.zeros((3, 37), np.float32))            # all-zero rows: scale 1, no NaN
    xs.append(np.abs(xs[1]))                            # non-negative: zero point 0
    check_against_reference(g, [[a] for a in xs])
    # the scheme: dequantized values are within half a step of the input
    for a in xs:
        qv, sv, zv = interpret(g, [a])[:3]
        deq = (qv.astype(np.float32) - zv.astype(np.float32)) * sv
        assert np.all(np.abs(deq - a) <= sv * 0.5 + 1e-6)
        if rr:
            assert qv.max() <= 127   # 7-bit codes: the int8 GEMM's vpmaddubsw route


def test_quant_linear_3d_static_params():
    g = Graph()
    x = g.add_input("x", TensorType(dtypes.u8, (2, M, 19)))
    s, z = g.add_const(np.float32(0.05), "s"), g.add_const(np.uint8(77), "z")
    w = g.add_const(rint(np.int8, (5, 19), -127, 127), "w")
    ws = g.add_const(rng.uniform(0.01, 0.1, (5,)).astype(np.float32), "ws")
    g.outputs = [g.op("quant_linear", [x, s, z, w, ws])]
    check_against_reference(g, [[rint(np.uint8, (2, m, 19))] for m in (1, 3, 50)])


@pytest.mark.parametrize("attrs", [
    {}, {"padding": (1, 1)}, {"stride": (2, 2), "padding": (1, 0)}, {"groups": 2, "padding": (1, 1)},
    {"dilation": (2, 1), "padding": (2, 1)}])
def test_quant_conv2d(attrs):
    g = Graph()
    x = g.add_input("x", TensorType(dtypes.u8, (M, 4, 9, 8)))
    s, z = g.add_const(np.float32(0.03), "s"), g.add_const(np.uint8(100), "z")
    cg = 4 // attrs.get("groups", 1)
    w = g.add_const(rint(np.int8, (6, cg, 3, 3), -127, 127), "w")
    ws = g.add_const(rng.uniform(0.01, 0.1, (6,)).astype(np.float32), "ws")
    b = g.add_const(rng.normal(size=(6,)).astype(np.float32), "b")
    g.outputs = [g.op("quant_conv2d", [x, s, z, w, ws, b], attrs)]
    check_against_reference(g, [[rint(np.uint8, (m, 4, 9, 8))] for m in (1, 3)], rtol=1e-5, atol=1e-4)
