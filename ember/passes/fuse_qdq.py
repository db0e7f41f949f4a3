"""Fuse QDQ groups of an already-quantized model into the int8 ops.

A QDQ model (ONNX Runtime's ``quantize_static``) says "this layer runs in int8" as

    linear(dequantize_linear(xq, sx, zx), W, [b])        W = dequantize(wq, sw) at import
    conv2d(dequantize_linear(xq, sx, zx), W, [b])

and, run as written, simulates int8 in fp32. This pass rewrites them to

    quant_linear(xq, sx, zx, wq, sw, [b])    quant_conv2d(xq, sx, zx, wq, sw, [b]) {attrs}

whose lowerings are the integer kernels (the conv rewrite is off by default: ``FUSE_CONV``
says why). The ``quantize_linear`` that requantizes the output
(and its ``dequantize_linear`` feeding the next layer) is left as it is: it consumes the
f32 result exactly as before.

The int8 weight. The importer (and ``fold_constants``) already turn ``dequantize_linear`` of
a constant into an f32 constant, so the weight usually arrives as f32 ``W``; a
``dequantize_linear`` of a constant with zero point 0 is taken as it stands. From f32 ``W``
the pass recovers ``wq`` (i8) and ``sw`` (per tensor, else per output channel) and accepts
them only if ``dequantize_linear(wq, sw)`` reproduces ``W`` bit for bit; otherwise the layer
stays fp32. The candidate scales are ``max|W| / qmax`` (qmax 127, or 63 for reduce_range)
and their f32 neighbours: symmetric int8 quantizers map the largest weight to +-qmax.
Nothing is guessed: the check is exact, so a weight that was never int8 is never touched.

What is exact. Let X = (xq - zx) * sx and W the (reproduced) weights. The integer sum
``acc = sum_k (xq - zx) * wq`` is exact (int32 when it provably fits, int64 otherwise: the
lowering decides), so ``quant_linear`` returns ``f32(acc) * f32(sx * sw) + b``, i.e. the
exact real value of ``sum_k X_k W_k`` up to three f32 roundings (acc -> f32 when
|acc| >= 2**24, sx * sw, the product) and a half-ulp difference per weight between
``wq * sw`` and its f32 rounding ``W``. The fp32 path it replaces rounds every one of its
K products and K-1 partial sums, so the new result is usually the closer of the two to the
exact value; the two differ by fp32 accumulation rounding, about K * 2**-24 relative to
sum |X_k W_k|, which is what the ONNX spec allows a MatMul/Conv (it fixes no summation
order). A requantizing ``quantize_linear`` after it can therefore move a code by one step
where the value sits within that rounding of a .5 tie, never more; a later layer then reads
that code as it would any other legal rounding (on the 4 x 1024 MLP of bench_qdq.py, 0 to
0.3% of the outputs moved, each by exactly one step). ``EMBER_VERIFY`` compares with a 1e-4
relative tolerance, so on such a model it reports those one-step moves as an error.

Requantization with the same parameters, ``quantize(dequantize(q, s, z), s, z)`` (directly
or through a reshape, as exporters put around Flatten), is the identity on ``q``: it becomes
``q`` (or ``reshape(q)``), so the next layer's int8 op reads the codes directly. Exact for
per-tensor ``s`` with 1e-30 < |s| < 1e30 (see ``_requantize_same``).

The int8 GEMM's fast u7 route needs activation codes provably in [0, 127]; a static QDQ
activation is a full-range 8-bit code, so the lowering takes the exact s16 route for it.
Correctness never depends on the range the data happens to have.
"""
from __future__ import annotations

import numpy as np

from ..ir import dtypes
from .pattern import Const, Op, Var, apply_rules

QMAXES = (127, 63)   # symmetric int8 weights; 63: ONNX Runtime's reduce_range weights
NEIGHBOURS = 2       # f32 steps tried on each side of max|W| / qmax


def _quantize_rows(w: np.ndarray, s: np.ndarray):
    """(rint(w / s) as i8, per row: whether dequantize(that, s) == w bit for bit)."""
    q = np.rint(w.astype(np.float64) / s.astype(np.float64))
    ok = np.all((q >= -128) & (q <= 127), axis=1)
    q = np.clip(q, -128, 127).astype(np.int8)
    ok &= np.all((q.astype(np.float32) * s).astype(np.float32) == w, axis=1)
    return q, ok


def _try_scales(w2: np.ndarray, amax: np.ndarray):
    """(wq, scale) with dequantize(wq, scale) == w2 for some candidate scale per row of
    ``w2`` (``amax`` [rows, 1]: each row's max |w|), or None."""
    rows = w2.shape[0]
    for qmax in QMAXES:
        # an all-zero row takes any scale (codes 0): 1
        base = np.where(amax > 0, amax / np.float32(qmax), np.float32(1)).astype(np.float32)
        found = np.zeros(rows, bool)
        wq = np.zeros(w2.shape, np.int8)
        scale = np.ones((rows, 1), np.float32)
        cands, up, down = [base], base, base
        for _ in range(NEIGHBOURS):  # the f32 rounding of the quantizer's own division
            up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
            cands += [up.astype(np.float32), down.astype(np.float32)]
        for s in cands:
            rows_left = np.flatnonzero(~found)
            for cols in (slice(0, 64), slice(None)):  # a cheap screen on a few columns first
                if rows_left.size == 0:
                    break
                q, ok = _quantize_rows(w2[rows_left, cols], s[rows_left])
                rows_left = rows_left[ok]
            if rows_left.size:
                wq[rows_left] = q[ok]
                scale[rows_left] = s[rows_left]
                found[rows_left] = True
        if found.all():
            return wq, scale.reshape(-1)
    return None


def int8_weight(w: np.ndarray):
    """(wq i8, scale f32 [] or [rows]) such that dequantize_linear(wq, scale) == w exactly,
    scales along axis 0 (a linear's out features, a conv's out channels); None if none found.

    >>> int8_weight(np.float32([[127, -64], [127, 3]]) * np.float32([[0.01], [0.02]]))
    (array([[127, -64], [127, 3]], dtype=int8), array([0.01, 0.02], dtype=float32))
    """
    w = np.ascontiguousarray(w, np.float32)
    if w.ndim < 1 or w.size == 0 or not np.all(np.isfinite(w)):
        return None
    w2 = w.reshape(w.shape[0], -1)
    amax = np.abs(w2).max()
    per_tensor = _try_scales(w.reshape(1, -1), np.full((1, 1), amax, np.float32))
    if per_tensor is not None:
        return per_tensor[0].reshape(w.shape), np.asarray(per_tensor[1][0], np.float32)
    per_row = _try_scales(w2, np.abs(w2).max(axis=1, keepdims=True))
    if per_row is not None:
        return per_row[0].reshape(w.shape), per_row[1]
    return None


def _weight(v):
    """The int8 form (wq, scale) of a weight operand, or None."""
    if v.kind == "const" and v.data is not None:
        return int8_weight(v.data) if v.dtype is dtypes.f32 else None
    n = v.producer
    if n is None or n.op != "dequantize_linear":
        return None
    consts = [i.data for i in n.inputs if i.kind == "const"]
    if len(consts) != len(n.inputs) or n.inputs[0].dtype is not dtypes.i8 or \
            (len(consts) == 3 and np.any(consts[2])):
        return None  # the int8 GEMM takes symmetric i8 weights (zero point 0)
    if consts[1].size > 1 and n.attrs["axis"] % v.type.rank != 0:
        return None  # scales along the input features: not a per-output-channel weight
    s = consts[1].astype(np.float32)
    return consts[0], (s.reshape(()) if s.size == 1 else s)


def _activation(g, m):
    """(xq, sx, zx) of the dequantized input, per tensor, as the int8 ops take them, or None."""
    xq, sx = m["xq"], m["sx"]
    if sx.data.size != 1:
        return None  # a per-channel activation scale has no int8 op (quant_linear: per row only)
    if "zx" in m and m["sx"].type.rank == 0:
        return xq, sx, m["zx"]  # already as the int8 ops take them
    zd = m["zx"].data if "zx" in m else np.zeros((), xq.dtype.np)
    zx = g.add_const(zd.reshape(()), f"{sx.name}_zp", xq.dtype)
    sx = g.add_const(sx.data.reshape(()).astype(np.float32), f"{sx.name}_s", dtypes.f32)
    return xq, sx, zx


def _fuse(op):
    def build(g, m):
        n = m.root.producer
        if len(n.inputs) == 3 and (n.inputs[2].kind != "const" or n.inputs[2].data is None
                                   or n.inputs[2].dtype is not dtypes.f32):
            return None
        w = _weight(n.inputs[1])
        act = _activation(g, m) if w is not None else None
        if act is None:
            return None
        wq, ws = w
        wq_v = g.add_const(wq, f"{n.inputs[1].name}_q", dtypes.i8)
        ws_v = g.add_const(np.asarray(ws, np.float32), f"{n.inputs[1].name}_scale", dtypes.f32)
        return g.op(op, [*act, wq_v, ws_v, *n.inputs[2:]], n.attrs if op == "quant_conv2d" else {},
                    source=n.source)
    return build


def _same_params(a, b) -> bool:
    return a is b or (a.kind == "const" and b.kind == "const" and a.data is not None and b.data is not None
                      and a.type == b.type and np.array_equal(a.data, b.data))


def _requantize_same(g, m):
    """quantize(f(dequantize(q, s, z)), s, z) -> f(q) for a per-tensor s, z and a data
    movement f (a reshape, or nothing): exact, since |q - z| <= 255 and the two f32
    roundings move (q - z) * s / s by far less than the 0.5 that rint needs to change it."""
    sv = abs(float(m["s"].data.reshape(-1)[0])) if m["s"].data.size == 1 else 0.0
    if not 1e-30 < sv < 1e30 or not (_same_params(m["s"], m["s2"]) and _same_params(m["z"], m["z2"])):
        return None
    if "mid" not in m:
        return m["q"]
    return g.op("reshape", [m["q"]], m.node("mid").attrs, source=m.node("mid").source)


def _dq(with_zp: bool):
    args = [Var("xq"), Const("sx")] + ([Const("zx")] if with_zp else [])
    return Op("dequantize_linear", *args)


def _layer_rules(op, qop):
    return [(f"qdq-{op}{'-bias' if bias else ''}{'' if zp else '-nozp'}", Op(op, _dq(zp), Var("w"), *bias), _fuse(qop))
            for zp in (True, False) for bias in ((), (Var("b"),))]


_DQ = Op("dequantize_linear", Var("q"), Const("s"), Const("z"))
REQUANT_RULES = [
    ("requantize-same", Op("quantize_linear", _DQ, Const("s2"), Const("z2")), _requantize_same),
    ("requantize-same-reshape", Op("quantize_linear", Op("reshape", _DQ, name="mid"), Const("s2"), Const("z2")),
     _requantize_same)]
LINEAR_RULES = _layer_rules("linear", "quant_linear")
CONV_RULES = _layer_rules("conv2d", "quant_conv2d")

# quant_conv2d (groups = 1) now lowers to im2col + the int8 GEMM (lower/rules_quant.py),
# 12-20x faster than the old reduction, but not reliably faster than the fp32 conv template
# (benchmarks/bench_quant_conv.py, noisy machine: 64->64 3x3 at 4 x 28 x 28 measured between
# 0.8x and 1.3x of fp32; the 1-image 28x28 / 56x56 shapes 1.2-2x). Grouped convolutions still
# lower to the reduction. So by default a QDQ conv keeps its exact simulated fp32 form;
# tests/passes/test_fuse_qdq.py asserts that default.
FUSE_CONV = False


def fuse_qdq(g, log=None, conv: bool | None = None):
    """Rewrite QDQ linear (and, with ``conv``, conv2d) groups into the int8 ops.

    >>> g = fuse_qdq(g)   # linear(dequantize_linear(xq, sx, zx), W) -> quant_linear(xq, sx, zx, wq, sw)
    """
    conv = FUSE_CONV if conv is None else conv
    return apply_rules(g, LINEAR_RULES + (CONV_RULES if conv else []) + REQUANT_RULES, log=log)
