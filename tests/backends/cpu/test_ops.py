"""Every op compiled to C against the numpy reference, on random inputs of several sizes.

Each graph uses symbolic dims, so one compilation serves sizes 1, 3, 7 and 127.
"""
import numpy as np
import pytest

import ember
from ember.errors import ShapeError
from ember.ir import Graph, TensorType, dtypes, sym
from ember.testing import check_against_reference

rng = np.random.default_rng(0)
SIZES = [1, 3, 7, 127]


def rand(shape, dtype=np.float32, low=-3.0, high=3.0):
    if np.dtype(dtype).kind == "b":
        return rng.random(shape) > 0.5
    if np.dtype(dtype).kind in "iu":
        return rng.integers(int(low), int(high) + 1, size=shape).astype(dtype)
    return rng.uniform(low, high, size=shape).astype(dtype)


def graph_of(op, input_types, attrs=None, extra=None):
    g = Graph()
    ins = [g.add_input(f"x{k}", t) for k, t in enumerate(input_types)]
    ins += [g.add_const(c, f"c{k}") for k, c in enumerate(extra or [])]
    out = g.op(op, ins, attrs or {})
    g.outputs = out if isinstance(out, list) else [out]
    return g


N, M = sym("n"), sym("m")
F32 = dtypes.f32


@pytest.mark.parametrize("op,low,high", [
    ("neg", -3, 3), ("abs", -3, 3), ("exp", -5, 5), ("log", 0.01, 5), ("sqrt", 0, 9),
    ("rsqrt", 0.01, 9), ("reciprocal", 0.1, 4), ("tanh", -4, 4), ("erf", -3, 3),
    ("sigmoid", -8, 8), ("relu", -3, 3), ("sin", -3, 3), ("cos", -3, 3), ("floor", -3, 3),
    ("ceil", -3, 3), ("sign", -3, 3), ("silu", -5, 5), ("gelu", -4, 4)])
def test_unary(op, low, high):
    g = graph_of(op, [TensorType(F32, (N,))])
    check_against_reference(g, [[rand((n,), low=low, high=high)] for n in SIZES])


def test_gelu_tanh_and_clamp_and_f64():
    g = graph_of("gelu", [TensorType(F32, (N, 5))], {"approximate": "tanh"})
    check_against_reference(g, [[rand((n, 5))] for n in SIZES])
    g = graph_of("clamp", [TensorType(F32, (N,))], {"min": -1.0, "max": 0.5})
    check_against_reference(g, [[rand((n,))] for n in SIZES])
    g = graph_of("clamp", [TensorType(F32, (N,))], {"min": 0.0})
    check_against_reference(g, [[rand((n,))] for n in SIZES])
    g = graph_of("exp", [TensorType(dtypes.f64, (N,))])
    check_against_reference(g, [[rand((n,), np.float64)] for n in SIZES])


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "maximum", "minimum", "pow", "mod"])
def test_binary_broadcast(op):
    low = 0.5 if op in ("pow", "div", "mod") else -3
    g = graph_of(op, [TensorType(F32, (N, M)), TensorType(F32, (M,))])
    check_against_reference(g, [[rand((n, m), low=low), rand((m,), low=low)]
                                for n, m in [(1, 1), (3, 7), (7, 3), (127, 5)]])
    g = graph_of(op, [TensorType(F32, (N, 1)), TensorType(F32, (1, M))])
    check_against_reference(g, [[rand((n, 1), low=low), rand((1, m), low=low)] for n, m in [(1, 3), (7, 127)]])


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "mod", "maximum"])
@pytest.mark.parametrize("dt", [np.int64, np.int32])
def test_integer_binary(op, dt):
    # negative operands check floor division / modulo semantics
    g = graph_of(op, [TensorType(dtypes.from_numpy(dt), (N,))] * 2)
    sets = []
    for n in SIZES:
        b = rand((n,), dt, -9, 9)
        b[b == 0] = 3
        sets.append([rand((n,), dt, -50, 50), b])
    check_against_reference(g, sets)


@pytest.mark.parametrize("op", ["eq", "ne", "lt", "le", "gt", "ge"])
def test_compare(op):
    g = graph_of(op, [TensorType(F32, (N,)), TensorType(F32, (N,))])
    sets = []
    for n in SIZES:
        a = rand((n,)).round()
        sets.append([a, rand((n,)).round()])
    check_against_reference(g, sets)


@pytest.mark.parametrize("op", ["logical_and", "logical_or", "logical_xor"])
def test_logical(op):
    g = graph_of(op, [TensorType(dtypes.bool_, (N,))] * 2)
    check_against_reference(g, [[rand((n,), bool), rand((n,), bool)] for n in SIZES])
    g = graph_of("logical_not", [TensorType(dtypes.bool_, (N,))])
    check_against_reference(g, [[rand((n,), bool)] for n in SIZES])


def test_where_broadcast():
    g = graph_of("where", [TensorType(dtypes.bool_, (N, 1)), TensorType(F32, (N, M)), TensorType(F32, (M,))])
    check_against_reference(g, [[rand((n, 1), bool), rand((n, m)), rand((m,))] for n, m in [(1, 1), (3, 7), (127, 3)]])


@pytest.mark.parametrize("src,dst", [(np.float32, np.int32), (np.float32, np.int64), (np.int64, np.float32),
                                     (np.float32, np.bool_), (np.bool_, np.float32), (np.float32, np.float64),
                                     (np.float32, np.float16), (np.int64, np.int32), (np.uint8, np.float32),
                                     (np.int8, np.int64)])
def test_cast(src, dst):
    g = graph_of("cast", [TensorType(dtypes.from_numpy(src), (N,))], {"dtype": dtypes.from_numpy(dst)})
    check_against_reference(g, [[rand((n,), src, -5 if np.dtype(src).kind != "u" else 0, 5)] for n in SIZES])


def test_float16_math():
    g = graph_of("add", [TensorType(dtypes.f16, (N,))] * 2)
    check_against_reference(g, [[rand((n,), np.float16), rand((n,), np.float16)] for n in SIZES])


@pytest.mark.parametrize("op", ["sum", "mean", "max", "min", "prod"])
@pytest.mark.parametrize("axes,keep", [((0,), False), ((1,), True), ((0, 2), False), ((-1,), False),
                                       ((0, 1, 2), True)])
def test_reduce(op, axes, keep):
    low, high = (0.5, 1.5) if op == "prod" else (-3, 3)
    g = graph_of(op, [TensorType(F32, (N, 4, M))], {"axes": axes, "keepdims": keep})
    check_against_reference(g, [[rand((n, 4, m), low=low, high=high)] for n, m in [(1, 1), (3, 7), (7, 127)]],
                            rtol=1e-4)


def test_integer_reduce_and_argmax():
    g = graph_of("sum", [TensorType(dtypes.i64, (N, M))], {"axes": (1,)})
    check_against_reference(g, [[rand((n, m), np.int64, -9, 9)] for n, m in [(1, 1), (3, 127)]])
    g = graph_of("argmax", [TensorType(F32, (N, M))], {"axis": 1})
    check_against_reference(g, [[rand((n, m))] for n, m in [(1, 1), (3, 7), (7, 127)]])
    g = graph_of("argmax", [TensorType(F32, (N, M))], {"axis": 0, "keepdims": True})
    check_against_reference(g, [[rand((n, m))] for n, m in [(1, 1), (3, 7), (127, 3)]])


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax(op, axis):
    g = graph_of(op, [TensorType(F32, (N, M, 3))], {"axis": axis})
    check_against_reference(g, [[rand((n, m, 3), low=-10, high=10)] for n, m in [(1, 1), (3, 7), (7, 127)]])


def test_layer_norm():
    w, b = rand((M if False else 7,)), rand((7,))
    g = graph_of("layer_norm", [TensorType(F32, (N, 7))], {"eps": 1e-5}, extra=[w, b])
    check_against_reference(g, [[rand((n, 7))] for n in SIZES])
    g = graph_of("layer_norm", [TensorType(F32, (N, 3, 5))], {"axis": 1})
    check_against_reference(g, [[rand((n, 3, 5))] for n in SIZES])


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 127, 3), (3, 7, 127), (127, 3, 7), (17, 300, 260)])
def test_matmul_2d(m, k, n):
    g = graph_of("matmul", [TensorType(F32, (m, k)), TensorType(F32, (k, n))])
    check_against_reference(g, [[rand((m, k)), rand((k, n))]], rtol=1e-4, atol=1e-4)


def test_matmul_symbolic_batched_and_transposed():
    # [B, H, S, D] @ [B, H, D, S]: the attention shape; the second operand is a transposed view
    S = sym("s")
    g = Graph()
    q = g.add_input("q", TensorType(F32, (N, 2, S, 8)))
    k = g.add_input("k", TensorType(F32, (N, 2, S, 8)))
    kt = g.op("permute", [k], {"perm": (0, 1, 3, 2)})
    g.outputs = [g.op("matmul", [q, kt])]
    check_against_reference(g, [[rand((n, 2, s, 8)), rand((n, 2, s, 8))] for n, s in [(1, 1), (3, 7), (2, 127)]],
                            rtol=1e-4, atol=1e-4)
    # broadcast batch and vectors
    g = graph_of("matmul", [TensorType(F32, (N, 3, 5)), TensorType(F32, (5, 4))])
    check_against_reference(g, [[rand((n, 3, 5)), rand((5, 4))] for n in SIZES], rtol=1e-4, atol=1e-4)
    for sa, sb in [((5,), (5, 4)), ((3, 5), (5,)), ((5,), (5,)), ((2, 3, 5), (5,))]:
        g = graph_of("matmul", [TensorType(F32, sa), TensorType(F32, sb)])
        check_against_reference(g, [[rand(sa), rand(sb)]], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("out_features", [1, 5])
def test_linear(bias, out_features):
    w = rand((out_features, 7))
    extra = [w, rand((out_features,))] if bias else [w]
    g = graph_of("linear", [TensorType(F32, (N, 7))], extra=extra)
    check_against_reference(g, [[rand((n, 7))] for n in SIZES], rtol=1e-4, atol=1e-4)
    g = graph_of("linear", [TensorType(F32, (N, 3, 7))], extra=extra)
    check_against_reference(g, [[rand((n, 3, 7))] for n in SIZES], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride,padding,dilation,groups", [
    ((1, 1), (0, 0), (1, 1), 1), ((2, 2), (1, 1), (1, 1), 1), ((1, 2), (2, 1), (2, 1), 1),
    ((1, 1), (1, 1), (1, 1), 2), ((2, 2), (1, 1), (1, 1), 4)])
def test_conv2d(stride, padding, dilation, groups):
    w = rand((4, 4 // groups, 3, 3))
    g = graph_of("conv2d", [TensorType(F32, (N, 4, M, 9))],
                 {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups},
                 extra=[w, rand((4,))])
    check_against_reference(g, [[rand((n, 4, h, 9))] for n, h in [(1, 5), (3, 7), (2, 12)]], rtol=1e-4, atol=1e-4)


def test_batch_norm():
    c = 3
    extra = [rand((c,)), rand((c,), low=0.5, high=2), rand((c,)), rand((c,))]
    g = graph_of("batch_norm", [TensorType(F32, (N, c, 4, 5))], {"eps": 1e-5}, extra=extra)
    check_against_reference(g, [[rand((n, c, 4, 5))] for n in SIZES[:3]])


@pytest.mark.parametrize("op,kernel,stride,padding,ceil", [
    ("max_pool2d", (2, 2), (2, 2), (0, 0), False), ("max_pool2d", (3, 3), (2, 2), (1, 1), False),
    ("max_pool2d", (3, 3), (2, 2), (0, 0), True), ("avg_pool2d", (2, 2), (2, 2), (0, 0), False),
    ("avg_pool2d", (3, 3), (2, 2), (1, 1), False), ("avg_pool2d", (3, 2), (1, 2), (1, 0), True)])
def test_pool(op, kernel, stride, padding, ceil):
    g = graph_of(op, [TensorType(F32, (N, 2, 9, 7))],
                 {"kernel": kernel, "stride": stride, "padding": padding, "ceil_mode": ceil})
    check_against_reference(g, [[rand((n, 2, 9, 7))] for n in SIZES[:3]])


def test_avg_pool_exclude_pad_and_adaptive():
    g = graph_of("avg_pool2d", [TensorType(F32, (N, 2, 9, 7))],
                 {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1), "count_include_pad": False})
    check_against_reference(g, [[rand((n, 2, 9, 7))] for n in SIZES[:3]])
    for hw, out in [((7, 7), (1, 1)), ((7, 5), (3, 2)), ((8, 8), (4, 4)), ((1, 3), (2, 2))]:
        g = graph_of("adaptive_avg_pool2d", [TensorType(F32, (N, 3) + hw)], {"output_size": out})
        check_against_reference(g, [[rand((n, 3) + hw)] for n in SIZES[:3]])


def test_views():
    S = sym("s")
    g = Graph()
    x = g.add_input("x", TensorType(F32, (N, S, 6)))
    a = g.op("reshape", [x], {"shape": (N, S, 2, 3)})
    b = g.op("permute", [a], {"perm": (0, 2, 1, 3)})
    c = g.op("reshape", [g.op("exp", [b])], {"shape": (N * 2, S * 3)})
    d = g.op("slice", [x], {"axis": 2, "start": 1, "end": 6, "step": 2})
    e = g.op("expand", [g.op("slice", [x], {"axis": 1, "start": 0, "end": 1})], {"shape": (N, S, 6)})
    f = g.op("concat", [x, e, g.op("neg", [x])], {"axis": 2})
    p = g.op("pad", [x], {"pads": (0, 0, 1, 2, 2, 0), "value": -1.5})
    g.outputs = [b, c, d, f, p, g.op("permute", [x], {"perm": (2, 0, 1)})]
    check_against_reference(g, [[rand((n, s, 6))] for n, s in [(1, 1), (3, 7), (2, 127)]])


def test_gathers_and_creation():
    S = sym("s")
    table = rand((11, 4))
    g = Graph()
    ids = g.add_input("ids", TensorType(dtypes.i64, (N, S)))
    w = g.add_const(table, "table")
    emb = g.op("embedding", [w, ids])
    x = g.add_input("x", TensorType(F32, (N, 5)))
    idx = g.add_const(np.array([4, 0, 2, 2], dtype=np.int64), "idx")
    sel = g.op("index_select", [x, idx], {"axis": 1})
    gi = g.add_input("gi", TensorType(dtypes.i64, (N, 3)))
    gat = g.op("gather", [x, gi], {"axis": 1})
    ar = g.op("arange", [], {"start": 2, "end": S + 2, "dtype": dtypes.i64})
    full = g.op("full", [], {"shape": (N, 2), "value": 0.25})
    g.outputs = [emb, sel, gat, ar, full]
    check_against_reference(g, [[rand((n, s), np.int64, 0, 10), rand((n, 5)), rand((n, 3), np.int64, 0, 4)]
                                for n, s in [(1, 1), (3, 7), (2, 127)]])


def test_arange_lengths_for_every_step_sign():
    # ceil((end - start) / step), as numpy; a range that runs the wrong way is empty
    for start, end, step in [(0, 5, 1), (4, 0, -1), (7, -2, -3), (1, 8, 3), (5, 5, 1), (5, 0, 2), (0, 3, -1)]:
        g = Graph()
        g.add_input("x", TensorType(F32, (1,)))
        g.outputs = [g.op("arange", [], {"start": start, "end": end, "step": step, "dtype": dtypes.i64})]
        want = np.arange(start, end, step)
        assert g.outputs[0].shape == (len(want),), (start, end, step)
        if len(want):
            np.testing.assert_array_equal(ember.compile(g)(np.zeros(1, np.float32)), want)
    with pytest.raises(ShapeError, match="step must not be 0"):
        Graph().op("arange", [], {"start": 0, "end": 3, "step": 0})


@pytest.mark.parametrize("causal,masked,safe", [(False, False, True), (True, False, True),
                                                (False, True, True), (True, True, False)])
def test_attention(causal, masked, safe):
    S = sym("s")
    g = Graph()
    q = g.add_input("q", TensorType(F32, (N, 2, S, 8)))
    k = g.add_input("k", TensorType(F32, (N, 2, S, 8)))
    v = g.add_input("v", TensorType(F32, (N, 2, S, 5)))
    ins = [q, k, v]
    if masked:
        ins.append(g.add_input("mask", TensorType(F32, (N, 1, 1, S))))
    g.outputs = [g.op("attention", ins, {"scale": 0.35, "causal": causal, "safe": safe})]
    sets = []
    for n, s in [(1, 1), (3, 7), (2, 127)]:
        xs = [rand((n, 2, s, 8)), rand((n, 2, s, 8)), rand((n, 2, s, 5))]
        if masked:
            m = np.where(rng.random((n, 1, 1, s)) < 0.3, -np.inf, 0).astype(np.float32)
            m[..., 0] = 0  # causal rows always see key 0
            if safe and n > 1:
                m[1] = -np.inf  # a fully masked batch row: safe attention gives zeros
            xs.append(m)
        sets.append(xs)
    check_against_reference(g, sets, rtol=1e-4, atol=1e-5)


def test_rms_norm():
    g = graph_of("rms_norm", [TensorType(F32, (N, 9))], {"eps": 1e-6}, extra=[rand((9,))])
    check_against_reference(g, [[rand((n, 9))] for n in SIZES])


@pytest.mark.parametrize("dt", [np.float32, np.int64])
@pytest.mark.parametrize("axis", [0, 1])
def test_cumsum(dt, axis):
    g = graph_of("cumsum", [TensorType(dtypes.from_numpy(dt), (N, M))], {"axis": axis})
    check_against_reference(g, [[rand((n, m), dt, -5, 5)] for n, m in [(1, 1), (3, 7), (127, 3)]], rtol=1e-4)


def test_integer_max_pool():
    g = graph_of("max_pool2d", [TensorType(dtypes.i32, (N, 2, 7, 7))],
                 {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1)})
    check_against_reference(g, [[rand((n, 2, 7, 7), np.int32, -100, 100)] for n in SIZES[:3]])
