"""The blocked GEMM (backends/cpu/gemm.py) against numpy: every path, ragged sizes, epilogues.

Paths: a constant B packed at compile time (GEMV when M == 1, blocked otherwise), an
activation B packed per task, A with unit or other k-stride, K split into blocks with
partial sums kept in C, and an output that is not float32 (one K block).
"""
import numpy as np
import pytest

from ember.ir import Graph, TensorType, dtypes, sym
from ember.lower.lowering import lower
from ember.lower.loop_ir import Matmul
from ember.lower.packing import pack_panels, unpack_panels
from ember.testing import check_against_reference

F32 = dtypes.f32
rng = np.random.default_rng(1)
SIZES = (1, 2, 7, 63, 64, 65, 513)
# a sample of (M, N, K) over SIZES: every size in every role, edges of the 6x16 tile and of
# the 512-deep K block, without the full cube
MNK = [(1, 1, 1), (1, 513, 65), (1, 7, 513), (2, 7, 63), (2, 64, 1), (7, 65, 64),
       (7, 1, 513), (63, 2, 7), (63, 64, 65), (64, 63, 513), (64, 513, 2), (65, 65, 65),
       (65, 7, 1), (513, 2, 64), (513, 65, 7), (513, 63, 513)]


def rand(shape):
    return rng.uniform(-1, 1, size=shape).astype(np.float32)


def check(g, input_sets, opt_level=2):
    return check_against_reference(g, input_sets, rtol=1e-4, atol=2e-4, opt_level=opt_level)


def test_pack_panels_round_trip():
    b = rand((5, 37))
    p = pack_panels(b)
    assert p.shape == (3, 5, 16) and np.all(p[2, :, 5:] == 0)
    np.testing.assert_array_equal(unpack_panels(p, 37), b)


def test_constant_b_is_packed():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (sym("n"), 20)))
    g.outputs = [g.op("linear", [x, g.add_const(rand((33, 20)), "w")])]
    mm = [k for k in lower(g).kernels if isinstance(k, Matmul)]
    assert len(mm) == 1 and mm[0].b.packed == 16 and mm[0].b.buf.numel == 3 * 20 * 16


@pytest.mark.parametrize("m,n,k", MNK)
def test_constant_b(m, n, k):
    g = Graph()
    x = g.add_input("x", TensorType(F32, (m, k)))
    g.outputs = [g.op("matmul", [x, g.add_const(rand((k, n)), "w")])]
    check(g, [[rand((m, k))]])


@pytest.mark.parametrize("m,n,k", MNK)
def test_activation_b(m, n, k):
    g = Graph()
    a = g.add_input("a", TensorType(F32, (m, k)))
    b = g.add_input("b", TensorType(F32, (k, n)))
    g.outputs = [g.op("matmul", [a, b])]
    check(g, [[rand((m, k)), rand((k, n))]])


@pytest.mark.parametrize("epilogue", ["bias", "bias_gelu", "bias_gelu_tanh", "residual"])
@pytest.mark.parametrize("n,k", [(65, 513), (7, 64), (513, 63), (33, 1025)])   # 1025: two K blocks
def test_linear_epilogues_any_batch(epilogue, n, k):
    """Symbolic rows: one build serves M = 1 (the GEMV path), ragged M and large M."""
    g = Graph()
    rows = sym("m")
    x = g.add_input("x", TensorType(F32, (rows, k)))
    y = g.op("linear", [x, g.add_const(rand((n, k)), "w"), g.add_const(rand((n,)), "b")])
    if epilogue.startswith("bias_gelu"):
        y = g.op("gelu", [y], {"approximate": "tanh" if epilogue.endswith("tanh") else "none"})
    if epilogue == "residual":
        y = g.op("add", [y, g.add_input("r", TensorType(F32, (rows, n)))])
    g.outputs = [y]
    sets = []
    for m in (1, 2, 65, 200):
        sets.append([rand((m, k))] + ([rand((m, n))] if epilogue == "residual" else []))
    compiled = check(g, sets)
    assert compiled.kernels == 1  # the epilogue was fused into the GEMM


def test_batched_broadcast_and_transposed_operands():
    # attention's shapes: Q @ K^T (B transposed: k-stride 1) and P @ V, with batch dims
    s, d = sym("s"), 65
    g = Graph()
    q = g.add_input("q", TensorType(F32, (2, 3, s, d)))
    kk = g.add_input("k", TensorType(F32, (2, 3, s, d)))
    scores = g.op("matmul", [q, g.op("permute", [kk], {"perm": (0, 1, 3, 2)})])
    g.outputs = [g.op("matmul", [scores, kk])]
    check(g, [[rand((2, 3, n, d)), rand((2, 3, n, d))] for n in (1, 7, 64)])
    # A transposed (k-stride != 1: packed per task), B broadcast over the batch
    g = Graph()
    a = g.add_input("a", TensorType(F32, (2, 63, 7)))       # used as [2, 7, 63]
    b = g.add_input("b", TensorType(F32, (63, 65)))
    g.outputs = [g.op("matmul", [g.op("permute", [a], {"perm": (0, 2, 1)}), b])]
    check(g, [[rand((2, 63, 7)), rand((63, 65))]])


def test_constant_b_with_unit_batch_dim_and_transposed_a():
    g = Graph()
    a = g.add_input("a", TensorType(F32, (3, 513, 65)))
    at = g.op("permute", [a], {"perm": (0, 2, 1)})            # [3, 65, 513], k-stride 65
    g.outputs = [g.op("matmul", [at, g.add_const(rand((1, 513, 63)), "w")])]
    check(g, [[rand((3, 513, 65))]])


@pytest.mark.parametrize("batch,m,n,k", [((3,), 1, 33, 7), ((2, 3), 5, 17, 65), ((4,), 13, 40, 1),
                                         ((36,), 16, 64, 300), ((2,), 49, 32, 9)])
def test_constant_b_per_batch_entry_is_packed(batch, m, n, k):
    # a constant B with one matrix per batch entry (Winograd's transformed weights) is packed
    # per entry at compile time; M of 1 takes the GEMV, 13, 16 and 49 rows split into
    # balanced row tiles (7 + 6, 8 + 8, 10 + 10 + 10 + 10 + 9)
    g = Graph()
    a = g.add_input("a", TensorType(F32, batch + (m, k)))
    g.outputs = [g.op("matmul", [a, g.add_const(rand(batch + (k, n)), "w")])]
    mm = [kk for kk in lower(g).kernels if isinstance(kk, Matmul)]
    assert len(mm) == 1 and mm[0].b.packed == 16
    assert mm[0].b.buf.numel == int(np.prod(batch)) * -(-n // 16) * k * 16
    check(g, [[rand(batch + (m, k))]])


@pytest.mark.parametrize("batch,m,n,k,bias", [((), 13, 64, 1024, True), ((2,), 65, 100, 2048, False),
                                              ((3,), 25, 513, 1024, True), ((), 12, 64, 1024, False)])
def test_a_with_a_4k_row_stride_is_copied_apart(batch, m, n, k, bias):
    # rows of A 4 KiB apart (K a multiple of 1024) are copied once per call to rows one cache
    # line further apart; with a batch of activation B's, a bias epilogue, and the edges of
    # the rule (12 rows, one micro-tile, read in place)
    g = Graph()
    a = g.add_input("a", TensorType(F32, batch + (m, k)))
    if batch:
        y = g.op("matmul", [a, g.add_input("b", TensorType(F32, batch + (k, n)))])
        ins = [rand(batch + (m, k)), rand(batch + (k, n))]
    else:
        y = g.op("matmul", [a, g.add_const(rand((k, n)), "w")])
        ins = [rand((m, k))]
    if bias:
        y = g.op("add", [y, g.add_const(rand((n,)), "bias")])
    g.outputs = [y]
    check(g, [ins])


def test_non_float32_output_and_unfused():
    # the epilogue casts to float64: C cannot hold float32 partial sums, so K is one block
    g = Graph()
    x = g.add_input("x", TensorType(F32, (65, 513)))
    y = g.op("matmul", [x, g.add_const(rand((513, 63)), "w")])
    g.outputs = [g.op("cast", [y], {"dtype": dtypes.f64})]
    check_against_reference(g, [[rand((65, 513))]], rtol=1e-4, atol=2e-4, opt_level=2)
    # opt_level 0: no epilogue fusion, the plain GEMM and a separate pointwise loop
    g = Graph()
    x = g.add_input("x", TensorType(F32, (sym("m"), 64)))
    g.outputs = [g.op("relu", [g.op("matmul", [x, g.add_const(rand((64, 65)), "w")])])]
    check(g, [[rand((m, 64))] for m in (1, 7, 65)], opt_level=0)


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (1, 1, 0), (1, 2, 0), (7, 2, 3)])
def test_conv2d_as_gemm_with_residual_epilogue(kernel, stride, padding):
    """conv2d lowers to one GEMM that packs its B panels from the image (implicit im2col; a
    1x1 stride-1 conv reads its input as a matrix); bias, a residual add and ReLU fold into
    the GEMM epilogue through the [n, O, H, W] view."""
    g = Graph()
    x = g.add_input("x", TensorType(F32, (sym("n"), 5, 13, 11)))
    w, b = g.add_const(rand((17, 5, kernel, kernel)), "w"), g.add_const(rand((17,)), "b")
    y = g.op("conv2d", [x, w, b], {"stride": (stride, stride), "padding": (padding, padding)})
    ho, wo = (13 + 2 * padding - kernel) // stride + 1, (11 + 2 * padding - kernel) // stride + 1
    y = g.op("relu", [g.op("add", [y, g.add_input("r", TensorType(F32, (sym("n"), 17, ho, wo)))])])
    g.outputs = [y]
    compiled = check(g, [[rand((n, 5, 13, 11)), rand((n, 17, ho, wo))] for n in (1, 3)])
    assert compiled.kernels == 1  # no im2col buffer, no separate epilogue loop


def test_empty_k_gives_the_epilogue_of_zero():
    g = Graph()
    a = g.add_input("a", TensorType(F32, (7, sym("k"))))
    b = g.add_input("b", TensorType(F32, (sym("k"), 65)))
    g.outputs = [g.op("add", [g.op("matmul", [a, b]), g.add_const(rand((65,)), "c")])]
    check(g, [[rand((7, 0)), rand((0, 65))], [rand((7, 3)), rand((3, 65))]])


# the micro-kernel is chosen by the instruction set gcc targets: AVX-512 (12 x 32 tiles, 12 x 16
# for a lone last panel) where -march=native has it, else AVX2 (6 x 16), else portable C. The
# native build is tested above; these build the AVX2 kernel on any machine (on an AVX2-only one
# it is the native build) and cover the edges of both tile shapes (N = 17, 31, 33, 40: one or
# two panels and a ragged one; M = 11-13, 25: around the 12-row tile).
ISA_FLAGS = {"avx2": ("-mno-avx512f",), "portable": ("-mno-avx2", "-mno-fma")}
TILE_EDGES = [(11, 17, 300), (12, 16, 257), (13, 33, 64), (25, 1, 7), (97, 31, 513), (1, 40, 33)]


@pytest.mark.parametrize("isa", sorted(ISA_FLAGS))
@pytest.mark.parametrize("m,n,k", TILE_EDGES)
def test_each_micro_kernel(monkeypatch, isa, m, n, k):
    from ember.backends.cpu import toolchain
    monkeypatch.setattr(toolchain, "FLAGS", toolchain.FLAGS + ISA_FLAGS[isa])
    g = Graph()
    x = g.add_input("x", TensorType(F32, (m, k)))
    b = g.add_input("b", TensorType(F32, (k, n)))
    w = g.add_const(rand((n, k)), "w")
    y = g.op("linear", [x, w, g.add_const(rand((n,)), "bias")])
    g.outputs = [g.op("relu", [y]), g.op("matmul", [x, b])]
    check(g, [[rand((m, k)), rand((k, n))]])


@pytest.mark.parametrize("m,n,k", TILE_EDGES)
def test_native_tile_edges(m, n, k):
    g = Graph()
    x = g.add_input("x", TensorType(F32, (m, k)))
    b = g.add_input("b", TensorType(F32, (k, n)))
    g.outputs = [g.op("matmul", [x, g.add_const(rand((k, n)), "w")]), g.op("matmul", [x, b])]
    check(g, [[rand((m, k)), rand((k, n))]])


def test_micro_kernels_are_one_object_shared_by_every_program(tmp_path, monkeypatch):
    # the micro-kernels are compiled once per compiler, flags and CPU and linked into each
    # program with a GEMM; a program without one does not link them
    import ember
    from ember.backends.cpu import gemm, toolchain
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path))
    before = toolchain.stats["objects"]
    for n, k in ((33, 20), (7, 513)):
        g = Graph()
        x = g.add_input("x", TensorType(F32, (65, k)))
        g.outputs = [g.op("matmul", [x, g.add_const(rand((k, n)), "w")])]
        assert gemm.LINK_MARK in check(g, [[rand((65, k))]]).source
    assert toolchain.stats["objects"] == before + 1
    assert len(list(tmp_path.glob("*/*.o"))) == 1
    g = Graph()
    g.outputs = [g.op("relu", [g.add_input("x", TensorType(F32, (5,)))])]
    assert gemm.LINK_MARK not in ember.compile(g).source
