"""Kernel fusion and memory planning: fewer kernels, less workspace, same results."""
import numpy as np
import pytest

import ember
from ember.ir import Graph, TensorType, dtypes, interpret, sym
from ember.lower.lowering import lower
from ember.lower.memory import plan_memory
from ember.lower.schedule import fuse_epilogues

F32 = dtypes.f32
rng = np.random.default_rng(0)


def mlp(depth=3, width=16):
    g = Graph()
    v = g.add_input("x", TensorType(F32, (sym("n"), width)))
    for k in range(depth):
        w = g.add_const(rng.standard_normal((width, width)).astype(np.float32) / 4, f"w{k}")
        b = g.add_const(rng.standard_normal(width).astype(np.float32), f"b{k}")
        v = g.op("gelu", [g.op("linear", [v, w, b])])
    g.outputs = [v]
    return g


def test_linear_gelu_becomes_one_kernel_each():
    g = mlp()
    prog = lower(g.clone())
    before = len(prog.kernels)
    log = []
    fuse_epilogues(prog, log)
    assert before == 6 and len(prog.kernels) == 3, [k.name for k in prog.kernels]
    assert len(log) == 3 and "epilogue" in str(log[0])  # the last GELU writes the output directly
    x = rng.standard_normal((5, 16)).astype(np.float32)
    np.testing.assert_allclose(ember.compile(g)(x), interpret(g, [x])[0], rtol=1e-5, atol=1e-5)


def test_conv_relu_fuses_into_the_gemm():
    # conv2d is a GEMM reading the image as implicit im2col; its [n, O, H*W] output is read as
    # [n, O, H, W] by the ReLU, which still folds into the GEMM's epilogue
    from ember.lower.loop_ir import Matmul
    g = Graph()
    x = g.add_input("x", TensorType(F32, (sym("n"), 2, 8, 8)))
    w = g.add_const(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w")
    c = g.op("conv2d", [x, w], {"padding": (1, 1)})
    g.outputs = [g.op("max_pool2d", [g.op("relu", [c])], {"kernel": (2, 2), "stride": (2, 2)})]
    prog = lower(g.clone())
    fuse_epilogues(prog)
    assert len(prog.kernels) == 2   # GEMM (+ implicit im2col) + ReLU, max pool
    assert [k.epilogue is not None for k in prog.kernels if isinstance(k, Matmul)] == [True]
    xs = rng.standard_normal((3, 2, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(ember.compile(g)(xs), interpret(g, [xs])[0], rtol=1e-5, atol=1e-5)


def test_memory_plan_reuses_dead_buffers():
    g = mlp(depth=6)
    prog = lower(g.clone())
    plan = plan_memory(prog)
    planned, total = plan.summary({"n": 32})
    assert len(plan.slots) == 2 and planned * 2 < total
    # no two temps alive at the same time share a slot
    for members in plan.slots:
        spans = []
        for b in members:
            w = next(i for i, k in enumerate(prog.kernels) if k.out is b)
            r = max(i for i, k in enumerate(prog.kernels) if b in _reads(k))
            spans.append((w, r))
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def _reads(k):
    from ember.lower.schedule import _reads as reads
    return reads(k)


def test_opt_levels_shrink_kernels_and_workspace():
    g = mlp(depth=4)
    o0, o2 = ember.compile(g, opt_level=0), ember.compile(g, opt_level=2)
    assert o2.kernels < o0.kernels
    p0, _ = o0.memory_plan.summary({"n": 64})
    p2, _ = o2.memory_plan.summary({"n": 64})
    assert p2 < p0


def test_softmax_and_layer_norm_are_one_kernel_each():
    from ember.testing import check_against_reference
    S = sym("s")
    for op, attrs, extra in [("softmax", {"axis": -1}, []), ("log_softmax", {"axis": 2}, []),
                             ("layer_norm", {"axis": 2}, [rng.standard_normal(9).astype(np.float32),
                                                          rng.standard_normal(9).astype(np.float32)]),
                             ("rms_norm", {"axis": 2}, [])]:
        g = Graph()
        x = g.add_input("x", TensorType(F32, (sym("n"), S, 9)))
        r = g.op("add", [x, x])  # a producer that gets inlined into every stage
        g.outputs = [g.op(op, [r] + [g.add_const(c, f"c{i}") for i, c in enumerate(extra)], attrs)]
        cm = check_against_reference(g, [[rng.standard_normal((n, s, 9)).astype(np.float32) * 4]
                                         for n, s in [(1, 1), (3, 7), (2, 127)]], opt_level=2)
        assert cm.kernels == 1, (op, cm.source)


def test_row_fusion_keeps_results_other_kernels_need():
    # the row max is also a graph output: it must stay in memory, so no row fusion
    g = Graph()
    x = g.add_input("x", TensorType(F32, (sym("n"), 5)))
    m = g.op("max", [x], {"axes": (1,), "keepdims": True})
    g.outputs = [g.op("sub", [x, m]), m]
    from ember.testing import check_against_reference
    cm = check_against_reference(g, [[rng.standard_normal((n, 5)).astype(np.float32)] for n in (1, 3, 127)],
                                 opt_level=2)
    assert cm.kernels == 2


BS = [(3, 5), (sym("b"), sym("s"))]   # static, and symbolic (one compile for every size)


def _check_sizes(g, feature=16):
    c = ember.compile(g)
    static = all(isinstance(d, int) for d in g.inputs[0].shape)
    for b, s in [(3, 5)] if static else [(3, 5), (1, 1), (2, 7)]:
        xs = rng.standard_normal((b, s, feature)).astype(np.float32)
        np.testing.assert_allclose(c(xs), interpret(g, [xs])[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bs", BS)
def test_gelu_after_a_3d_linear_fuses(bs):
    # a [B, S, K] linear is a [B*S, K] GEMM whose output the GELU reads back as [B, S, N]: the
    # index (i // S) * (S * N) + (i % S) * N must simplify to i * N for the epilogue to match
    g = Graph()
    x = g.add_input("x", TensorType(F32, (*bs, 16)))
    w = g.add_const(rng.standard_normal((24, 16)).astype(np.float32), "w")
    b = g.add_const(rng.standard_normal(24).astype(np.float32), "b")
    h = g.op("linear", [x, w, b])
    half = g.op("mul", [h, g.add_const(np.float32(0.5), "half")])
    erf = g.op("erf", [g.op("mul", [h, g.add_const(np.float32(0.5 ** 0.5), "r2")])])
    g.outputs = [g.op("mul", [half, g.op("add", [erf, g.add_const(np.float32(1.0), "one")])])]
    prog = fuse_epilogues(lower(g.clone()))
    assert len(prog.kernels) == 1, [k.name for k in prog.kernels]
    _check_sizes(g)


def test_scaled_unravel_ravel_round_trip_simplifies():
    from ember.lower import loop_ir as L
    i = L.var("i0")
    for n, s in ((128, 1536), (5, 24), (3, 1)):
        e = L.add(L.mul(L.binary("floordiv", i, n), n * s), L.mul(L.binary("mod", i, n), s))
        assert e is L.mul(i, s) or (s == 1 and e is i), e
        e = L.add(L.mul(L.binary("mod", i, n), s), L.mul(L.binary("floordiv", i, n), n * s))
        assert e is L.mul(i, s) or (s == 1 and e is i), e
    # not a round trip: the outer stride is not n * s
    assert L.add(L.mul(L.binary("floordiv", i, 4), 12), L.mul(L.binary("mod", i, 4), 2)).op == "add"
    # a symbolic n (a dynamic sequence length), with a static or symbolic s
    n = sym("seq")
    for s in (1536, sym("h")):
        e = L.add(L.mul(L.binary("floordiv", i, L.idx(n)), L.idx(n * s)), L.mul(L.binary("mod", i, L.idx(n)), L.idx(s)))
        assert e.op == "mul" and e.args[0] is i and e.args[1].arg == s, e
    assert L.add(L.mul(L.binary("floordiv", i, L.idx(n)), L.idx(n * 3)),
                 L.mul(L.binary("mod", i, L.idx(n)), L.idx(2))).op == "add"


def test_reshape_pairs_symbolic_dims_that_divide():
    from ember.lower.rules import _reshape_groups
    b, s = sym("b"), sym("s")
    assert _reshape_groups((b, s, 32), (b * s, 32)) == [([0, 1], [0]), ([2], [1])]
    assert _reshape_groups((b * s, 32), (b, s, 32)) == [([0], [0, 1]), ([1], [2])]
    assert _reshape_groups((b, s, 4, 8), (b * s, 32)) == [([0, 1], [0]), ([2, 3], [1])]
    assert _reshape_groups((2 * s, 3), (s, 6)) == [([0, 1], [0, 1])]   # no finer pairing exists


@pytest.mark.parametrize("bs", BS)
def test_gelu_between_two_3d_linears_fuses(bs):
    # MiniLM's FFN: the GELU is materialized as the second GEMM's [B*S, N] operand but reads
    # the first GEMM's output through a [B, S, N] view; that index must fold for it to fuse
    from ember.lower.loop_ir import Matmul
    g = Graph()
    x = g.add_input("x", TensorType(F32, (*bs, 16)))
    h = g.op("linear", [x, g.add_const(rng.standard_normal((24, 16)).astype(np.float32), "w"),
                        g.add_const(rng.standard_normal(24).astype(np.float32), "b")])
    a = g.op("gelu", [h], {"approximate": "none"})
    g.outputs = [g.op("linear", [a, g.add_const(rng.standard_normal((8, 24)).astype(np.float32), "w2"),
                                 g.add_const(rng.standard_normal(8).astype(np.float32), "b2")])]
    prog = fuse_epilogues(lower(g.clone()))
    assert [type(k) for k in prog.kernels] == [Matmul, Matmul], [k.name for k in prog.kernels]
    _check_sizes(g)
