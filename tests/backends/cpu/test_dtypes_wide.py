"""bf16 and the unsigned 16/32/64-bit types, compiled to C against the numpy reference.

bf16 arrays are ml_dtypes.bfloat16 (2 bytes); the C code keeps the 16 bits and computes in
float, rounding to nearest even on every store and on every cast to bf16.
"""
import numpy as np
import pytest

from ember.api import compile as ember_compile
from ember.ir import Graph, TensorType, dtypes, interpret, sym

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
N = sym("n")


def _graph(build, input_types):
    g = Graph()
    ins = [g.add_input(f"x{k}", t) for k, t in enumerate(input_types)]
    out = build(g, *ins)
    g.outputs = out if isinstance(out, list) else [out]
    return g


def _bits(a):
    return np.asarray(a).view(np.uint16)


def test_bf16_round_trip_rounds_to_nearest_even():
    g = _graph(lambda g, x: g.op("cast", [x], {"dtype": dtypes.bf16}), [TensorType(dtypes.f32, (N,))])
    one_ulp = np.float32(2.0 ** -7)  # bf16 has 8 significant bits: ulp(1) = 2**-7
    x = np.array([1.0, 1.0 + one_ulp / 2, 1.0 + 3 * one_ulp / 2, 1.0 + one_ulp / 2 + 2.0 ** -20,
                  -2.5, 3.0e38, np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-40], np.float32)
    got = ember_compile(g)(x)
    assert got.dtype == BF16
    want = x.astype(BF16)  # ml_dtypes: round to nearest even
    np.testing.assert_array_equal(_bits(got)[~np.isnan(x)], _bits(want)[~np.isnan(x)])
    assert np.isnan(got.astype(np.float32)[np.isnan(x)]).all()


def test_bf16_pointwise_computes_in_float_and_stores_bf16():
    def build(g, x, y):
        return g.op("mul", [g.op("exp", [x]), y])
    g = _graph(build, [TensorType(dtypes.bf16, (N, 3))] * 2)
    rng = np.random.default_rng(0)
    c = ember_compile(g)
    for n in (1, 5, 33):
        x = rng.uniform(-3, 3, (n, 3)).astype(BF16)
        y = rng.uniform(-3, 3, (n, 3)).astype(BF16)
        got = c(x, y)
        want = interpret(g, [x, y])[0]
        assert got.dtype == BF16 and want.dtype == BF16
        # the reference rounds exp's result to bf16 before the multiply, the fused kernel not:
        # one bf16 ulp apart at most
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2 ** -7)


@pytest.mark.parametrize("dt", [dtypes.bf16, dtypes.f16])
def test_16_bit_cast_inside_a_fused_kernel_rounds(dt):
    # f32 -> bf16/f16 -> f32 in one kernel must still lose the low bits
    g = _graph(lambda g, x: g.op("cast", [g.op("cast", [x], {"dtype": dt})], {"dtype": dtypes.f32}),
               [TensorType(dtypes.f32, (N,))])
    x = np.random.default_rng(1).standard_normal(100).astype(np.float32)
    np.testing.assert_array_equal(ember_compile(g)(x), x.astype(dt.np).astype(np.float32))


def test_bf16_reduction():
    g = _graph(lambda g, x: g.op("sum", [x], {"axes": (1,), "keepdims": False}), [TensorType(dtypes.bf16, (N, 16))])
    x = np.random.default_rng(2).uniform(-1, 1, (4, 16)).astype(BF16)
    got = ember_compile(g)(x)
    assert got.dtype == BF16
    want = x.astype(np.float32).sum(axis=1)
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=2 ** -7, atol=1e-2)


@pytest.mark.parametrize("dt", [dtypes.u16, dtypes.u32, dtypes.u64])
def test_unsigned_arithmetic_wraps_like_numpy(dt):
    def build(g, x, y):
        return [g.op("add", [x, y]), g.op("sub", [x, y]), g.op("mul", [x, y]), g.op("div", [x, y]),
                g.op("mod", [x, y]), g.op("gt", [x, y]), g.op("maximum", [x, y]),
                g.op("max", [x], {"axes": (0,), "keepdims": False}),
                g.op("min", [x], {"axes": (0,), "keepdims": False})]
    g = _graph(build, [TensorType(dt, (N,))] * 2)
    info = np.iinfo(dt.np)
    rng = np.random.default_rng(3)
    # values across the whole range: u64 above 2**63 must not pass through int64 helpers
    x = rng.integers(0, info.max, 64, dtype=dt.np, endpoint=True)
    y = rng.integers(1, info.max, 64, dtype=dt.np, endpoint=True)
    x[:3] = [info.max, 0, info.max - 1]
    y[:3] = [1, info.max, 2]
    got = ember_compile(g)(x, y)
    want = interpret(g, [x, y])
    for k, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype, k
        np.testing.assert_array_equal(a, b, err_msg=f"output {k}")


@pytest.mark.parametrize("dt", [dtypes.u16, dtypes.u32, dtypes.u64])
def test_unsigned_model_saves_and_loads(tmp_path, dt):
    g = _graph(lambda g, x: g.op("add", [x, g.add_const(np.arange(3).astype(dt.np), "c")]),
               [TensorType(dt, (N, 3))])
    ember_compile(g).save(tmp_path / "m.ember")
    from ember.api import load
    x = np.full((2, 3), np.iinfo(dt.np).max, dt.np)
    np.testing.assert_array_equal(load(tmp_path / "m.ember")(x), x + np.arange(3).astype(dt.np))


def test_bf16_conv_and_matmul_compute_in_f32():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, 3, 3, 3)).astype(BF16)
    g = _graph(lambda g, x: g.op("matmul", [g.op("conv2d", [x, g.add_const(w, "w")]),
                                          g.add_const(rng.standard_normal((6, 5)).astype(BF16), "m")]),
               [TensorType(dtypes.bf16, (1, 3, 8, 8))])
    x = rng.standard_normal((1, 3, 8, 8)).astype(BF16)
    got = ember_compile(g)(x).astype(np.float32)
    want = interpret(g, [x])[0].astype(np.float32)
    assert np.abs(got - want).max() <= 2e-2 * np.abs(want).max()   # bf16 rounding of the middle result


def test_text_ir_round_trips_bf16_and_u64_constants():
    from ember.ir import parser, printer
    g = Graph()
    x = g.add_input("x", TensorType(dtypes.bf16, (2,)))
    y = g.add_input("y", TensorType(dtypes.u64, (2,)))
    g.outputs = [g.op("add", [x, g.add_const(np.array([1.5, -2.25], BF16), "c")]),
                 g.op("add", [y, g.add_const(np.array([2**64 - 1, 3], np.uint64), "d")])]
    back = parser.parse(printer.print_graph(g))
    for a, b in zip(g.constants, back.constants):
        assert a.data.dtype == b.data.dtype
        np.testing.assert_array_equal(a.data, b.data)


def test_bf16_div_and_mod_are_float_ops_in_the_reference():
    # ml_dtypes.bfloat16 has numpy kind "V": the reference must still divide, not floor-divide
    g = _graph(lambda g, x, y: [g.op("div", [x, y]), g.op("mod", [x, y])], [TensorType(dtypes.bf16, (2,))] * 2)
    x, y = np.array([7, -7], BF16), np.array([2, 2], BF16)
    for got in (interpret(g, [x, y]), ember_compile(g)(x, y)):
        np.testing.assert_array_equal(got[0].astype(np.float32), [3.5, -3.5])
        np.testing.assert_array_equal(got[1].astype(np.float32), [1, -1])
