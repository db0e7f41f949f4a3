"""The fused attention kernel (backends/cpu/attention.py) against the op's numpy reference.

Batch and both sequence lengths are symbolic, so one build per graph runs every size in
its list: lengths around the 16-query and 64-key blocks, Sq != Sk both ways, and one long
sequence (513) that crosses many key blocks of the online softmax. Query blocks of at most
four rows (Sq = 1, 2, and the last row of 65 or 513) take the row-by-row path, the others
the 16-lane one.
"""
import numpy as np
import pytest

from ember.ir import Graph, TensorType, dtypes, sym
from ember.lower.attention import Attention
from ember.lower.loop_ir import Loop
from ember.lower.lowering import lower
from ember.testing import check_against_reference

F32 = dtypes.f32
B, SQ, SK = sym("b"), sym("sq"), sym("sk")
rng = np.random.default_rng(7)
# (batch, Sq, Sk): every length in both roles, not the full product
SIZES = [(1, 1, 1), (2, 2, 7), (1, 7, 2), (1, 7, 63), (2, 63, 64), (1, 64, 65), (1, 65, 64),
         (1, 513, 65), (1, 2, 513), (1, 513, 513)]
H = 2


def rand(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def build(d, dv=None, mask_shape=None, causal=False, safe=True, scale=None, kv_heads=H):
    dv = dv or d
    g = Graph()
    ins = [g.add_input("q", TensorType(F32, (B, H, SQ, d))),
           g.add_input("k", TensorType(F32, (B, kv_heads, SK, d))),
           g.add_input("v", TensorType(F32, (B, kv_heads, SK, dv)))]
    if mask_shape is not None:
        ins.append(g.add_input("mask", TensorType(F32, mask_shape)))
    attrs = {"scale": scale if scale is not None else d ** -0.5, "causal": causal, "safe": safe}
    g.outputs = [g.op("attention", ins, attrs)]
    return g


def inputs(b, sq, sk, d, dv=None, kv_heads=H, spread=1.5):
    dv = dv or d
    return [rand(b, H, sq, d, scale=spread), rand(b, kv_heads, sk, d, scale=spread), rand(b, kv_heads, sk, dv)]


def check(g, sets):
    assert any(isinstance(k, Attention) for k in lower(g).kernels), "the fused kernel was not used"
    check_against_reference(g, sets, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("d", [1, 3, 16, 64, 127])
def test_head_dims(d):
    check(build(d), [inputs(b, sq, sk, d) for b, sq, sk in SIZES])


def test_value_dim_differs_and_shared_kv_head():
    # Dv = 5 (ragged: V is copied into padded blocks); one K/V head broadcast to both query heads
    g = build(16, dv=5, kv_heads=1)
    check(g, [inputs(b, sq, sk, 16, dv=5, kv_heads=1) for b, sq, sk in SIZES[:7]])


def test_large_scores_rescale_the_accumulator():
    # keys grow along the sequence: each key block's max dwarfs the ones before it
    g = build(64, scale=0.25)
    sets = []
    for sq, sk in [(7, 513), (65, 130)]:
        q, k, v = inputs(1, sq, sk, 64, spread=1.0)
        sets.append([q, k * np.linspace(1, 4, sk, dtype=np.float32)[:, None], v])
    check(g, sets)


def _pad_mask(b, sk, fill):
    m = np.where(rng.random((b, 1, 1, sk)) < 0.4, fill, 0).astype(np.float32)
    m[..., 0] = 0   # every row keeps key 0
    return m


@pytest.mark.parametrize("fill", [-np.inf, -1e9, np.finfo(np.float32).min])
def test_padding_mask(fill):
    g = build(64, mask_shape=(B, 1, 1, SK))
    check(g, [inputs(b, sq, sk, 64) + [_pad_mask(b, sk, fill)] for b, sq, sk in SIZES])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("fill", [-np.inf, np.finfo(np.float32).min, -1e9])
def test_padded_sequences(fill, causal):
    # each sequence of the batch padded on the right or the left, some of length 0: the
    # kernel skips the padded keys at either end (fills <= -1e30), which must not change a
    # row that sees no real key (zeros for -inf, uniform weights for a finite fill)
    g = build(32, mask_shape=(B, 1, 1, SK), causal=causal)
    sets = []
    for b, sq, sk in SIZES + [(4, 130, 130), (3, 16, 200)]:
        m = np.zeros((b, 1, 1, sk), np.float32)
        for i in range(b):
            n = [0, 1, sk // 3, sk - 1][(i + sk) % 4] if sk > 1 else i % 2
            if i % 2:
                m[i, ..., :sk - n] = fill     # left padding: the last n keys are real
            else:
                m[i, ..., n:] = fill          # right padding: the first n keys are real
        sets.append(inputs(b, sq, sk, 32) + [m])
    check(g, sets)


def test_full_masks():
    # a [Sq, Sk] mask shared by the batch and a per-batch [B, 1, Sq, Sk] one
    g = build(16, mask_shape=(SQ, SK))
    check(g, [inputs(b, sq, sk, 16) + [rand(sq, sk, scale=3.0)] for b, sq, sk in SIZES])
    g = build(16, mask_shape=(B, 1, SQ, SK))
    sets = []
    for b, sq, sk in SIZES:
        m = np.where(rng.random((b, 1, sq, sk)) < 0.3, -np.inf, rand(b, 1, sq, sk)).astype(np.float32)
        m[..., 0] = 0
        sets.append(inputs(b, sq, sk, 16) + [m])
    check(g, sets)


@pytest.mark.parametrize("masked", [False, True])
def test_causal(masked):
    # Sq > Sk leaves the first rows without any visible key: zeros (safe)
    g = build(64, mask_shape=(B, 1, 1, SK) if masked else None, causal=True)
    sets = []
    for b, sq, sk in SIZES + [(1, 130, 513), (1, 100, 7)]:
        xs = inputs(b, sq, sk, 64)
        sets.append(xs + [_pad_mask(b, sk, -np.inf)] if masked else xs)
    check(g, sets)


@pytest.mark.parametrize("safe", [True, False])
def test_fully_masked_rows(safe):
    # whole rows of -inf: safe gives zeros, unsafe gives NaN like the reference
    g = build(16, mask_shape=(B, 1, SQ, SK), safe=safe)
    sets = []
    for b, sq, sk in [(2, 7, 63), (1, 65, 130), (2, 17, 513)]:
        m = np.zeros((b, 1, sq, sk), np.float32)
        m[0, :, ::3] = -np.inf     # every third query row of batch 0 sees nothing
        if b > 1:
            m[1] = -np.inf         # batch 1 sees nothing at all
        sets.append(inputs(b, sq, sk, 16) + [m])
    check(g, sets)


@pytest.mark.parametrize("v_transposed", [False, True])
def test_permuted_views_are_read_in_place(v_transposed):
    # q (and v) as [B, S, H, D] projections permuted to [B, H, S, D]; k given transposed
    # [B, H, D, S] (and v too: no unit stride along the head dim at all)
    g = Graph()
    q = g.add_input("q", TensorType(F32, (B, SQ, H, 64)))
    k = g.add_input("k", TensorType(F32, (B, H, 64, SK)))
    vshape, vperm = ((B, H, 64, SK), (0, 1, 3, 2)) if v_transposed else ((B, SK, H, 64), (0, 2, 1, 3))
    v = g.add_input("v", TensorType(F32, vshape))
    qp = g.op("permute", [q], {"perm": (0, 2, 1, 3)})
    kp = g.op("permute", [k], {"perm": (0, 1, 3, 2)})
    vp = g.op("permute", [v], {"perm": vperm})
    g.outputs = [g.op("attention", [qp, kp, vp], {"scale": 0.125, "causal": True, "safe": True})]
    kernels = lower(g).kernels
    assert not any(isinstance(k, Loop) for k in kernels), "a permuted operand was copied"
    check(g, [[rand(b, sq, H, 64), rand(b, H, 64, sk), rand(b, H, 64, sk) if v_transposed else rand(b, sk, H, 64)]
              for b, sq, sk in SIZES[:8]])


def test_float64_takes_the_unfused_path():
    g = Graph()
    ins = [g.add_input(n, TensorType(dtypes.f64, (B, SQ, 8))) for n in "qkv"]
    g.outputs = [g.op("attention", ins, {"scale": 0.3, "causal": True, "safe": True})]
    assert not any(isinstance(k, Attention) for k in lower(g).kernels)
    check_against_reference(g, [[rng.standard_normal((2, 9, 8)) for _ in "qkv"]])


@pytest.mark.parametrize("flags", [("-mno-avx2", "-mno-fma"), ("-mno-avx512f",)], ids=["portable", "avx2"])
def test_other_instruction_sets(monkeypatch, flags):
    # the plain-C micro-kernels, as built for a CPU without AVX2/FMA, and the AVX2 ones (6 rows
    # of two ymm) on a machine whose native build takes the AVX-512 ones (12 rows of one zmm)
    from ember.backends.cpu import toolchain
    monkeypatch.setattr(toolchain, "FLAGS", toolchain.FLAGS + flags)
    g = build(16, dv=5, mask_shape=(B, 1, 1, SK), causal=True)
    check(g, [inputs(b, sq, sk, 16, dv=5) + [_pad_mask(b, sk, -np.inf)] for b, sq, sk in SIZES[:8]])


@pytest.mark.parametrize("shape", [(SK,), (H, 1, SK), (B, H, SQ, 1)])
def test_masks_of_other_ranks_and_broadcasts(shape):
    g = build(3, mask_shape=shape)
    sets = []
    for b, sq, sk in SIZES[:8]:
        env = {"b": b, "sq": sq, "sk": sk}
        m = rand(*[env[str(d)] if not isinstance(d, int) else d for d in shape], scale=2.0)
        sets.append(inputs(b, sq, sk, 3) + [m])
    check(g, sets)


@pytest.mark.parametrize("d", [3, 16, 32])
def test_heads_inner_output_feeds_the_next_projection_without_a_copy(d):
    # [b, h, s, d] -> transpose -> [b, s, h * d] -> linear: the kernel stores its output heads
    # inner, so the transposed view is contiguous and the GEMM reads it in place
    g = Graph()
    ins = [g.add_input(n, TensorType(F32, (B, H, SQ, d))) for n in "qkv"]
    mask = g.add_input("mask", TensorType(F32, (B, 1, 1, SQ)))
    att = g.op("attention", ins + [mask], {"scale": d ** -0.5, "causal": False, "safe": True})
    t = g.op("reshape", [g.op("permute", [att], {"perm": (0, 2, 1, 3)})], {"shape": (B, SQ, H * d)})
    w = g.add_const(rand(5, H * d), "w")
    g.outputs = [g.op("linear", [t, w])]
    kernels = lower(g).kernels
    assert [type(k).__name__ for k in kernels] == ["Attention", "Matmul"]
    assert kernels[0].out_strides[-3:] == (d, H * d, 1)   # [b, h, s, d] at [b, s, h, d]
    sets = []
    for b, sq, _ in SIZES[:8]:
        q, k, v = (rand(b, H, sq, d, scale=1.5) for _ in range(3))
        sets.append([q, k, v, _pad_mask(b, sq, -1e9)])
    check(g, sets)


def test_expanded_mask_is_read_as_one_row_for_all_queries():
    # a padding mask expanded to [b, 1, Sq, Sk] (as HF builds it) is stored at its own size,
    # [b, 1, 1, Sk], and read with stride 0 along the queries
    g = Graph()
    ins = [g.add_input(n, TensorType(F32, (B, H, SQ, 16))) for n in "qk"] + \
        [g.add_input("v", TensorType(F32, (B, H, SQ, 16)))]
    pad = g.add_input("pad", TensorType(F32, (B, 1, 1, SQ)))
    mask = g.op("expand", [g.op("mul", [pad, g.add_const(np.float32(2.0), "two")])], {"shape": (B, 1, SQ, SQ)})
    g.outputs = [g.op("attention", ins + [mask], {"scale": 0.25, "causal": False, "safe": True})]
    kernels = lower(g).kernels
    att = next(k for k in kernels if isinstance(k, Attention))
    assert att.mask.strides[-2] == 0
    assert all(list(k.shape).count(SQ) <= 1 for k in kernels if isinstance(k, Loop))   # no [.., Sq, Sk] mask
    check(g, [[rand(b, H, s, 16), rand(b, H, s, 16), rand(b, H, s, 16), _pad_mask(b, s, -1e9)]
              for b, s, _ in SIZES[:7]])
