"""The int8 GEMM (backends/cpu/gemm_int8.py) against exact int64 numpy references.

Every integer result must be exact: random shapes with M, N, K in {1, 2, 7, 63, 64, 65, 513},
extreme codes that would saturate a careless ``vpmaddubsw`` route, zero points, per-channel
scales and bias. M is symbolic, so each (K, N) is one compiled program run at every M.
"""
import numpy as np
import pytest

import ember
from ember.ir import Graph, TensorType, dtypes, sym
from ember.lower.packing_int8 import pack_groups, unpack_groups
from ember.api import build_graph

rng = np.random.default_rng(11)
M = sym("m")
MS = (1, 2, 7, 63, 64, 65, 513)
KN = [(1, 1), (2, 7), (7, 63), (63, 65), (64, 2), (65, 513), (513, 64)]


def route(compiled) -> str:
    """Which micro-kernel family the program calls ('u7', 'b8', 'b16') or 'fallback'."""
    for v in ("u7", "b8", "b16"):
        if f"int8 GEMM, route {v} */" in compiled.source:
            return v
    return "fallback"


def mmi_graph(K, N, b, za=None, zb=None, adt=dtypes.u8):
    g = Graph()
    a = g.add_input("a", TensorType(adt, (M, K)))
    ins = [a, g.add_const(b, "b")]
    if za is not None:
        ins += [g.add_const(za, "za"), g.add_const(zb, "zb")]
    g.outputs = [g.op("matmul_integer", ins)]
    return g


def exact(a, b, za=0, zb=0):
    return (a.astype(np.int64) - np.int64(za)) @ (b.astype(np.int64) - np.asarray(zb, np.int64))


@pytest.mark.parametrize("K,N", KN)
def test_matmul_integer_const_weight_exact(K, N):
    b = rng.integers(-128, 128, (K, N)).astype(np.int8)
    za, zb = np.uint8(rng.integers(0, 256)), np.int8(rng.integers(-128, 128))
    c = ember.compile(mmi_graph(K, N, b, za, zb))
    want_route = "b8" if np.abs(b.astype(np.int64) - zb).max() <= 127 else "b16"
    assert route(c) == want_route
    for m in MS:
        a = rng.integers(0, 256, (m, K)).astype(np.uint8)
        got = c.run_numpy([a])[0]
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, exact(a, b, za, zb), err_msg=f"M={m} K={K} N={N}")


def test_u8_weight_with_zero_point_packs_int16():
    # ONNX MatMulInteger with a u8 weight: b - zb spans [-200, 55], beyond int8: int16 panels
    K, N = 65, 33
    b = rng.integers(0, 256, (K, N)).astype(np.uint8)
    b[0, 0], b[1, 1] = 0, 255
    c = ember.compile(mmi_graph(K, N, b, np.uint8(7), np.uint8(200)))
    assert route(c) == "b16"
    for m in (1, 7, 64):
        a = rng.integers(0, 256, (m, K)).astype(np.uint8)
        np.testing.assert_array_equal(c.run_numpy([a])[0], exact(a, b, 7, 200))


def test_signed_activations_and_batch():
    K, N = 64, 65
    b = rng.integers(-128, 128, (K, N)).astype(np.int8)
    g = Graph()
    a = g.add_input("a", TensorType(dtypes.i8, (3, M, K)))
    g.outputs = [g.op("matmul_integer", [a, g.add_const(b, "b")])]
    c = ember.compile(g)
    assert route(c) == "b8"
    x = rng.integers(-128, 128, (3, 7, K)).astype(np.int8)
    np.testing.assert_array_equal(c.run_numpy([x])[0], exact(x, b))


@pytest.mark.parametrize("av,bv,za", [(255, -128, 0), (255, 127, 0), (0, -128, 255), (128, 127, 255)])
def test_int16_route_extremes(av, bv, za):
    # |a - za| = 255 against the extreme weights: pair sums of 65280, far past int16
    K, N = 513, 17
    b = np.full((K, N), bv, np.int8)
    c = ember.compile(mmi_graph(K, N, b, np.uint8(za), np.int8(0)))
    a = np.full((3, K), av, np.uint8)
    got = c.run_numpy([a])[0]
    assert (got == (av - za) * bv * K).all()


def dq_linear_graph(K, N, per_row, w, ws, bias, reduce_range=True):
    g = Graph()
    x = g.add_input("x", TensorType(dtypes.f32, (M, K)))
    q, s, z = g.op("dynamic_quantize", [x], {"per_row": per_row, "dtype": dtypes.u8, "reduce_range": reduce_range})
    ins = [q, s, z, g.add_const(w, "w"), g.add_const(ws, "ws")] + ([g.add_const(bias, "bias")] if bias is not None else [])
    g.outputs = [g.op("quant_linear", ins), q, s, z]
    return g


def quant_linear_ref(q, s, z, w, ws, bias):
    acc = exact(q, w.T, 0, 0) - z.astype(np.int64) * w.astype(np.int64).sum(1)
    y = acc.astype(np.float32) * (s * ws)
    return y + bias if bias is not None else y


@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("K,N", [(7, 63), (64, 65), (513, 2), (1, 7)])
def test_u7_route_quant_linear(K, N, per_row):
    w = rng.integers(-128, 128, (N, K)).astype(np.int8)
    ws = (rng.random(N) * 0.02 + 1e-3).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    c = ember.compile(dq_linear_graph(K, N, per_row, w, ws, bias))
    assert route(c) == "u7"
    for m in MS:
        x = (rng.standard_normal((m, K)) * 3 + rng.standard_normal((m, 1))).astype(np.float32)
        y, q, s, z = c.run_numpy([x])
        assert q.max() <= 127, "reduce_range codes must stay below 128"
        np.testing.assert_allclose(y, quant_linear_ref(q, s, z, w, ws, bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("wv", [127, -128, -127])
def test_u7_route_no_saturation_at_extremes(wv):
    # every code 127 (x = 127.0: scale 1, zero point 0) against extreme weights: the largest
    # pair sums vpmaddubsw can see, 2 * 127 * 128 = 32512 < 32767; results exact in float32
    K, N = 513, 33
    w = np.full((N, K), wv, np.int8)
    c = ember.compile(dq_linear_graph(K, N, True, w, np.ones(N, np.float32), None))
    assert route(c) == "u7"
    y, q, s, z = c.run_numpy([np.full((5, K), 127.0, np.float32)])
    assert (q == 127).all() and (s == 1).all() and (z == 0).all()
    assert (y == np.float32(127 * wv * K)).all()


def test_u7_codes_full_range_with_zero_point():
    # codes 0..127 with a zero point in the middle: the epilogue's zp * colsum(w) correction
    K, N = 128, 16
    x = np.tile(np.arange(K, dtype=np.float32) - 64, (2, 1))   # min -64, max 63: scale 1, zp 64
    w = rng.integers(-128, 128, (N, K)).astype(np.int8)
    c = ember.compile(dq_linear_graph(K, N, True, w, np.ones(N, np.float32), None))
    y, q, s, z = c.run_numpy([x])
    assert q.min() == 0 and q.max() == 127 and (z == 64).all()
    np.testing.assert_array_equal(y, (x.astype(np.int64) @ w.T.astype(np.int64)).astype(np.float32))


def test_full_range_activations_take_int16_route():
    K, N = 65, 63
    w = rng.integers(-127, 128, (N, K)).astype(np.int8)
    ws = np.full(N, 0.01, np.float32)
    c = ember.compile(dq_linear_graph(K, N, True, w, ws, None, reduce_range=False))
    assert route(c) == "b8"
    x = rng.standard_normal((9, K)).astype(np.float32)
    y, q, s, z = c.run_numpy([x])
    assert q.max() > 127
    np.testing.assert_allclose(y, quant_linear_ref(q, s, z, w, ws, None), rtol=1e-5, atol=1e-5)


def test_overflow_risk_falls_back_exactly():
    # K * 255 * 127 >= 2**31: the int32 kernel could overflow, so the reduction (int64) runs
    K = 70000
    b = np.full((K, 2), -127, np.int8)
    c = ember.compile(mmi_graph(K, 2, b, np.uint8(0), np.int8(0)))
    assert route(c) == "fallback"
    a = np.full((2, K), 100, np.uint8)
    np.testing.assert_array_equal(c.run_numpy([a])[0], exact(a, b))


@pytest.mark.parametrize("flags,m", [(("-mno-avx2",), 7), (("-mno-avx512f",), 7), (("-mno-avx512f",), 25),
                                     ((), 25), ((), 12), ((), 13)], ids=["portable", "avx2", "avx2-25",
                                                                          "native-25", "native-12", "native-13"])
def test_other_kernels_match(flags, m):
    # the C micro-kernels without AVX2, the AVX2 ones on a machine whose native build takes
    # AVX-512 VNNI, and the native ones at the edges of their 12-row tile, read the same packed
    # layouts and give the exact results
    K, N = 65, 33
    b = rng.integers(-128, 128, (K, N)).astype(np.int8)
    g = Graph()
    a = g.add_input("a", TensorType(dtypes.u8, (M, K)))
    x = g.add_input("x", TensorType(dtypes.f32, (M, K)))
    q, s, z = g.op("dynamic_quantize", [x], {"per_row": True, "dtype": dtypes.u8, "reduce_range": True})
    wq = rng.integers(-128, 128, (N, K)).astype(np.int8)
    ws = np.full(N, 0.5, np.float32)
    g.outputs = [g.op("matmul_integer", [a, g.add_const(b, "b")]),
                 g.op("quant_linear", [q, s, z, g.add_const(wq, "wq"), g.add_const(ws, "ws")]), q, s, z]
    native, _ = build_graph(g, extra_flags=flags)
    av = rng.integers(0, 256, (m, K)).astype(np.uint8)
    xv = rng.standard_normal((m, K)).astype(np.float32)
    mm, y, qv, sv, zv = native.run([av, xv])
    np.testing.assert_array_equal(mm, exact(av, b))
    np.testing.assert_allclose(y, quant_linear_ref(qv, sv, zv, wq, ws, None), rtol=1e-5, atol=1e-5)


def test_pack_groups_round_trip():
    w = rng.integers(-128, 128, (37, 13)).astype(np.int8)
    for g in (2, 4):
        p = pack_groups(w, g)
        assert p.shape == (3, -(-13 // g), 16, g)
        np.testing.assert_array_equal(unpack_groups(p, 37, 13), w)
        assert not p[2, :, 37 - 32:].any()   # zero columns past N in the last panel
