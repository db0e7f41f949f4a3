"""ONNX converters, continued from onnx_ops.py: Sampling and pooling of any rank: GridSample, AffineGrid, RoiAlign, Col2Im, N-d pooling, 3-D convolution."""
from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from ..ir import dtypes
from .onnx import Unsupported, onnx_dtype
from .onnx_ops import (
    CONVERTERS, _c, _conv_2d, _conv_transpose_2d, _float, _moments, _permute, _pool, _rank,
    _reshape, _reverse, _round, _spatial_pads, _unsqueeze, _where, conv)
from .onnx_ops_misc import _lp_pool_2d, _max_pool


# ---------------------------------------------------------------- GridSample

def _reflect_into(cx, x, lo, hi):
    """Fold coordinates outside [lo, hi] back in by reflecting at the borders, as often as
    needed (GridSample's reflection padding)."""
    k = lambda v: _c(cx, v, x)  # noqa: E731
    rng = hi - lo
    below, above = cx.op("lt", [x, k(lo)]), cx.op("gt", [x, k(hi)])
    dx = _where(cx, below, cx.op("sub", [k(lo), x]), cx.op("sub", [x, k(hi)]))
    n = cx.op("floor", [cx.op("div", [dx, k(rng)])])
    r = cx.op("sub", [dx, cx.op("mul", [n, k(rng)])])
    even = cx.op("eq", [cx.op("mod", [n, k(2.0)]), k(0.0)])
    lo_r, hi_r = cx.op("add", [k(lo), r]), cx.op("sub", [k(hi), r])
    folded = _where(cx, below, _where(cx, even, lo_r, hi_r), _where(cx, even, hi_r, lo_r))
    return _where(cx, cx.op("logical_or", [below, above]), folded, x)


def _keys_cubic(cx, t, A=-0.75):
    """Weights of taps -1, 0, 1, 2 around a point t in [0, 1) past tap 0 (Keys' cubic)."""
    k = lambda v: _c(cx, v, t)  # noqa: E731
    mul, add, sub = (lambda p, q: cx.op("mul", [p, q])), (lambda p, q: cx.op("add", [p, q])), \
        (lambda p, q: cx.op("sub", [p, q]))

    def far(d):   # 1 <= d < 2
        return sub(mul(add(mul(sub(mul(k(A), d), k(5 * A)), d), k(8 * A)), d), k(4 * A))

    def near(d):  # d < 1
        return add(mul(mul(sub(mul(k(A + 2), d), k(A + 3)), d), d), k(1.0))
    one_t = sub(k(1.0), t)
    return [far(add(t, k(1.0))), near(t), near(one_t), far(add(one_t, k(1.0)))]


@conv("GridSample")
def _grid_sample(cx, ins, a):
    X, grid = _float(ins[0], "GridSample"), _float(ins[1], "GridSample")
    if not (X.type.is_static and grid.type.is_static):
        raise Unsupported("GridSample over dynamic shapes")
    nd = _rank(X) - 2
    if _rank(grid) != nd + 2 or grid.shape[-1] != nd or grid.shape[0] != X.shape[0]:
        raise ShapeError(f"GridSample: grid {list(grid.shape)} does not fit input {list(X.shape)}")
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(a.get("mode", "linear"), a.get("mode", "linear"))
    pad = a.get("padding_mode", "zeros")
    if mode not in ("nearest", "linear", "cubic") or pad not in ("zeros", "border", "reflection"):
        raise Unsupported(f"GridSample mode {mode!r} with padding_mode {pad!r}")
    align = bool(a.get("align_corners", 0))
    N, C = int(X.shape[0]), int(X.shape[1])
    dims = [int(d) for d in X.shape[2:]]
    out_sp = tuple(int(d) for d in grid.shape[1:-1])
    g = cx.cast(grid, X.dtype)
    k = lambda v: _c(cx, v, g)  # noqa: E731
    per_dim = []  # per spatial dim: [(index as float, weight or None)] over its taps
    for i, d in enumerate(dims):
        # the grid's last axis holds (x, y[, z]): x indexes the last spatial dim
        gi = _reshape(cx, cx.op("slice", [g], {"axis": nd + 1, "start": nd - 1 - i, "end": nd - i}),
                      (N,) + out_sp)
        if align:
            x = cx.op("mul", [cx.op("add", [gi, k(1.0)]), k((d - 1) / 2)])
        else:
            x = cx.op("div", [cx.op("sub", [cx.op("mul", [cx.op("add", [gi, k(1.0)]), k(float(d))]),
                                            k(1.0)]), k(2.0)])
        if mode == "nearest":
            x = _round(cx, [x], {})
        lo, hi = (0.0, d - 1.0) if align else (-0.5, d - 0.5)
        outside = cx.op("logical_or", [cx.op("lt", [x, k(lo)]), cx.op("gt", [x, k(hi)])])
        if pad == "border":
            x = _where(cx, outside, cx.op("clamp", [x], {"min": 0.0, "max": d - 1.0}), x)
        elif pad == "reflection":
            x = _reflect_into(cx, x, lo, hi)
        if mode == "nearest":
            taps = [(x, None)]
        else:
            x0 = cx.op("floor", [x])
            t = cx.op("sub", [x, x0])
            if mode == "linear":
                taps = [(x0, cx.op("sub", [k(1.0), t])), (cx.op("add", [x0, k(1.0)]), t)]
            else:
                taps = [(cx.op("add", [x0, k(float(o))]), w) for o, w in zip((-1, 0, 1, 2), _keys_cubic(cx, t))]
        fixed = []
        for idx, w in taps:  # where each tap reads, by the padding mode
            if pad == "zeros":
                ok = cx.op("logical_and", [cx.op("ge", [idx, k(0.0)]), cx.op("le", [idx, k(d - 1.0)])])
                w = _where(cx, ok, w if w is not None else k(1.0), k(0.0))
            elif pad == "reflection":
                idx = _reflect_into(cx, idx, lo, hi)
            idx = cx.cast(cx.op("clamp", [idx], {"min": 0.0, "max": d - 1.0}), dtypes.i64)
            fixed.append((idx, w))
        per_dim.append(fixed)
    # every combination of taps: gather rows of X laid out as [N * spatial, C]
    m = N * int(np.prod(out_sp, dtype=np.int64))
    xf = _reshape(cx, _permute(cx, X, [0] + list(range(2, nd + 2)) + [1]), (N * int(np.prod(dims)), C))
    strides = [int(np.prod(dims[i + 1:], dtype=np.int64)) for i in range(nd)]
    base = _reshape(cx, cx.const_array(np.arange(N, dtype=np.int64) * int(np.prod(dims)), dtypes.i64),
                    (N,) + (1,) * len(out_sp))
    acc = None
    for combo in np.ndindex(*[len(t) for t in per_dim]):
        flat, w = base, None
        for i, j in enumerate(combo):
            idx, wi = per_dim[i][j]
            flat = cx.op("add", [flat, cx.op("mul", [idx, cx.const(strides[i], dtypes.i64)]) if strides[i] != 1 else idx])
            if wi is not None:
                w = wi if w is None else cx.op("mul", [w, wi])
        v = _reshape(cx, cx.op("index_select", [xf, _reshape(cx, flat, (m,))], {"axis": 0}), (N,) + out_sp + (C,))
        if w is not None:
            v = cx.op("mul", [v, _unsqueeze(cx, w, [len(out_sp) + 1])])
        acc = v if acc is None else cx.op("add", [acc, v])
    return _permute(cx, acc, [0, len(out_sp) + 1] + list(range(1, len(out_sp) + 1)))


@conv("Col2Im")
def _col2im(cx, ins, a):
    x = _float(ins[0], "Col2Im")
    image, block = cx.ints(1, "image_shape"), cx.ints(2, "block_shape")
    nd = len(image)
    if not x.type.is_static:
        raise Unsupported("Col2Im with dynamic shapes")
    if len(block) != nd:
        raise ShapeError(f"Col2Im: image_shape {image} and block_shape {block} differ in rank")
    dil = list(a.get("dilations", [1] * nd))
    strides = list(a.get("strides", [1] * nd))
    pads = list(a.get("pads", [0] * (2 * nd)))
    padded = [image[i] + pads[i] + pads[nd + i] for i in range(nd)]
    blocks = [(padded[i] - dil[i] * (block[i] - 1) - 1) // strides[i] + 1 for i in range(nd)]
    N, CK, L = (int(d) for d in x.shape)
    K = int(np.prod(block))
    if CK % K or L != int(np.prod(blocks)):
        raise ShapeError(f"Col2Im: input {list(x.shape)} does not fit {blocks} blocks of {block}")
    # which (kernel offset, block) column lands on which pixel of the padded image is fixed
    # at compile time: the sum of overlapping columns is a product with a 0/1 matrix
    P = int(np.prod(padded))
    hit = np.zeros((K, L, P), dtype=x.dtype.np)
    for ki, kk in enumerate(np.ndindex(*block)):
        for li, bb in enumerate(np.ndindex(*blocks)):
            pos = [bb[i] * strides[i] + kk[i] * dil[i] for i in range(nd)]
            hit[ki, li, np.ravel_multi_index(pos, padded)] = 1
    cols = _reshape(cx, x, (N, CK // K, K * L))
    y = _reshape(cx, cx.op("matmul", [cols, cx.const_array(hit.reshape(K * L, P), x.dtype)]),
                 (N, CK // K, *padded))
    for i in range(nd):  # crop the padding
        if pads[i] or pads[nd + i]:
            y = cx.op("slice", [y], {"axis": 2 + i, "start": pads[i], "end": pads[i] + image[i]})
    return y


@conv("MelWeightMatrix")
def _mel_weight_matrix(cx, ins, a):
    n_mel, n_dft, rate = int(cx.scalar(0)), int(cx.scalar(1)), int(cx.scalar(2))
    lo, hi = float(cx.scalar(3)), float(cx.scalar(4))
    # triangular filters between mel-spaced edges, snapped to DFT bins
    to_mel = lambda f: 2595 * np.log1p(f / 700) / np.log(10)  # noqa: E731
    edges_mel = to_mel(lo) + np.arange(n_mel + 2) * (to_mel(hi) - to_mel(lo)) / (n_mel + 2)
    edges_hz = 700 * np.expm1(edges_mel / 2595 * np.log(10))
    bins = (((n_dft + 1) * edges_hz) // rate).astype(int)
    w = np.zeros((n_dft // 2 + 1, n_mel))
    for i in range(n_mel):
        left, centre, right = bins[i], bins[i + 1], bins[i + 2]
        if centre == left:
            w[centre, i] = 1
        else:
            j = np.arange(left, centre + 1)
            w[j, i] = (j - left) / (centre - left)
        if right > centre:
            j = np.arange(centre, right)
            w[j, i] = (right - j) / (right - centre)
    dt = onnx_dtype(a.get("output_datatype", 1))
    return cx.const_array(w.astype(dt.np), dt)


@conv("RoiAlign")
def _roi_align(cx, ins, a):
    X, rois, bidx = _float(ins[0], "RoiAlign"), ins[1], ins[2]
    if not (X.type.is_static and rois.type.is_static):
        raise Unsupported("RoiAlign over dynamic shapes")
    ratio = a.get("sampling_ratio", 0)
    if ratio <= 0:
        raise Unsupported("RoiAlign with sampling_ratio=0 (the sampling grid would depend on "
                          "the box sizes, known only at run time)")
    N, C, H, W = (int(d) for d in X.shape)
    R = int(rois.shape[0])
    oh, ow = a.get("output_height", 1), a.get("output_width", 1)
    half = a.get("coordinate_transformation_mode", "half_pixel") == "half_pixel"
    scale = a.get("spatial_scale", 1.0)
    rois = cx.cast(rois, X.dtype)
    k = lambda v: _c(cx, v, X)  # noqa: E731
    col = lambda j: cx.op("slice", [rois], {"axis": 1, "start": j, "end": j + 1})  # noqa: E731

    def axis_taps(j, pooled, length):
        """Per box, bin and sample along one axis: the two neighbour pixels and weights."""
        start = cx.op("sub", [cx.op("mul", [col(j), k(scale)]), k(0.5 if half else 0.0)])
        end = cx.op("sub", [cx.op("mul", [col(j + 2), k(scale)]), k(0.5 if half else 0.0)])
        size = cx.op("sub", [end, start])
        if not half:
            size = cx.op("maximum", [size, k(1.0)])
        step = cx.op("div", [size, k(float(pooled))])                        # [R, 1]
        # sample i of bin p sits at start + step * (p + (i + 0.5) / ratio)
        frac = (np.arange(pooled)[:, None] + (np.arange(ratio)[None, :] + 0.5) / ratio).reshape(1, -1)
        c = cx.op("add", [start, cx.op("mul", [step, cx.const_array(frac.astype(X.dtype.np), X.dtype)])])
        valid = cx.op("logical_and", [cx.op("ge", [c, k(-1.0)]), cx.op("le", [c, k(float(length))])])
        c = cx.op("maximum", [c, k(0.0)])
        low = cx.op("floor", [c])
        at_end = cx.op("ge", [low, k(length - 1.0)])
        low = _where(cx, at_end, k(length - 1.0), low)
        high = _where(cx, at_end, low, cx.op("add", [low, k(1.0)]))
        lf = cx.op("sub", [_where(cx, at_end, low, c), low])
        zero = k(0.0)
        w_low = _where(cx, valid, cx.op("sub", [k(1.0), lf]), zero)
        w_high = _where(cx, valid, lf, zero)
        as_idx = lambda v: _reshape(cx, cx.cast(v, dtypes.i64), (R, pooled, ratio))  # noqa: E731
        as_w = lambda v: _reshape(cx, v, (R, pooled, ratio))  # noqa: E731
        return [(as_idx(low), as_w(w_low)), (as_idx(high), as_w(w_high))]

    ys, xs = axis_taps(1, oh, H), axis_taps(0, ow, W)
    xf = _reshape(cx, _permute(cx, X, (0, 2, 3, 1)), (N * H * W, C))
    boff = _reshape(cx, cx.op("mul", [cx.cast(bidx, dtypes.i64), cx.const(H * W, dtypes.i64)]), (R, 1, 1, 1, 1))
    m = R * oh * ratio * ow * ratio
    mode = a.get("mode", "avg")
    acc = None
    for yi, wy in ys:
        for xi, wx in xs:
            yv, wyv = _reshape(cx, yi, (R, oh, ratio, 1, 1)), _reshape(cx, wy, (R, oh, ratio, 1, 1))
            xv, wxv = _reshape(cx, xi, (R, 1, 1, ow, ratio)), _reshape(cx, wx, (R, 1, 1, ow, ratio))
            idx = cx.op("add", [cx.op("add", [boff, cx.op("mul", [yv, cx.const(W, dtypes.i64)])]), xv])
            v = _reshape(cx, cx.op("index_select", [xf, _reshape(cx, idx, (m,))], {"axis": 0}),
                         (R, oh, ratio, ow, ratio, C))
            v = cx.op("mul", [v, _unsqueeze(cx, cx.op("mul", [wyv, wxv]), [5])])
            acc = v if acc is None else cx.op("add" if mode == "avg" else "maximum", [acc, v])
    if mode == "avg":
        y = cx.op("div", [cx.op("sum", [acc], {"axes": (2, 4), "keepdims": False}), k(float(ratio * ratio))])
    elif mode == "max":  # the largest weighted corner over the samples (as the reference does)
        y = cx.op("max", [acc], {"axes": (2, 4), "keepdims": False})
    else:
        raise Unsupported(f"RoiAlign mode {mode!r}")
    return _permute(cx, y, (0, 3, 1, 2))


@conv("LinearAttention")
def _linear_attention(cx, ins, a):
    q, k, v, past, decay, beta = (ins[i] if cx.has(i) else None for i in range(6))
    rule = a.get("update_rule", "gated_delta")
    gated, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    if rule not in ("linear", "gated", "delta", "gated_delta"):
        raise ShapeError(f"LinearAttention update_rule {rule!r} is not linear/gated/delta/gated_delta")
    if gated != (decay is not None) or delta != (beta is not None):
        raise ShapeError(f"LinearAttention {rule!r}: decay is {'required' if gated else 'not allowed'}, "
                         f"beta is {'required' if delta else 'not allowed'}")
    hq, hkv = a["q_num_heads"], a["kv_num_heads"]
    if hq <= 0 or hkv <= 0 or hq % hkv:
        raise ShapeError(f"LinearAttention: q_num_heads {hq} is not a multiple of kv_num_heads {hkv}")
    if not all(x.type.is_static for x in (q, k, v)):
        raise Unsupported("LinearAttention over dynamic shapes (the recurrence is unrolled)")
    B, T = int(q.shape[0]), int(q.shape[1])
    dk, dv = int(q.shape[2]) // hq, int(v.shape[2]) // hkv
    f32 = dtypes.f32

    def heads(x, h):  # [B, T, h*D] -> [B, h, T, D] in f32
        return _permute(cx, _reshape(cx, cx.cast(x, f32), (B, T, h, int(x.shape[2]) // h)), (0, 2, 1, 3))

    def step(x, t):   # [B, h, T, D] -> [B, h, 1, D]
        return cx.op("slice", [x], {"axis": 2, "start": t, "end": t + 1})

    q4, k4, v4 = heads(q, hq), heads(k, hkv), heads(v, hkv)
    if decay is not None:
        last = int(decay.shape[2])
        if last not in (hkv, hkv * dk):
            raise ShapeError(f"LinearAttention: decay's last dim {last} is neither {hkv} nor {hkv * dk}")
        g4 = heads(decay, hkv)                                  # [B, hkv, T, 1 or dk]
    if beta is not None:
        b4 = heads(beta, int(beta.shape[2]))                    # [B, hkv or 1, T, 1]
    state = cx.cast(past, f32) if past is not None else cx.op(
        "full", [], {"shape": (B, hkv, dk, dv), "value": 0.0, "dtype": f32})
    scale = a.get("scale", 0.0) or 1.0 / math.sqrt(dk)
    group = hq // hkv
    outs = []
    # the recurrence, unrolled over the (static) sequence: each step is a few small matmuls
    for t in range(T):
        kt, vt = step(k4, t), step(v4, t)                       # [B, hkv, 1, dk|dv]
        if gated:
            gt = step(g4, t)
            state = cx.op("mul", [state, _reshape(cx, cx.op("exp", [gt]), (B, hkv, int(gt.shape[3]), 1))])
        if delta:
            vt = cx.op("mul", [step(b4, t), cx.op("sub", [vt, cx.op("matmul", [kt, state])])])
        state = cx.op("add", [state, cx.op("mul", [_reshape(cx, kt, (B, hkv, dk, 1)), vt])])
        read = state
        if group > 1:  # each kv head's state serves `group` query heads
            read = _reshape(cx, cx.op("expand", [_reshape(cx, state, (B, hkv, 1, dk, dv))],
                                      {"shape": (B, hkv, group, dk, dv)}), (B, hq, dk, dv))
        outs.append(cx.op("mul", [cx.op("matmul", [step(q4, t), read]), _c(cx, scale, read)]))
    o = outs[0] if T == 1 else cx.op("concat", outs, {"axis": 2})   # [B, hq, T, dv]
    o = _reshape(cx, _permute(cx, o, (0, 2, 1, 3)), (B, T, hq * dv))
    return [cx.cast(o, q.dtype), cx.cast(state, past.dtype if past is not None else q.dtype)]


# ---------------------------------------------------------------- pooling of any rank
#
# Max and sum over a box are separable: pool along one spatial axis at a time, each a few
# strided slices combined elementwise. An average divides by the count of the window's
# taps that count, which is the product of per-axis counts (the window is a box). This
# covers what the 2-D pooling ops lack: 3-D windows and dilated averages.

def _pool_nd(cx, x, kind, a):
    nd = _rank(x) - 2
    if not x.type.is_static:
        raise Unsupported(f"{nd}-D pooling over dynamic shapes")
    kernel = list(a["kernel_shape"])
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    ceil = bool(a.get("ceil_mode", 0))
    include = bool(a.get("count_include_pad", 0))
    pb, pe = _spatial_pads(cx, a, x.shape[2:], kernel, strides, dil)
    from ..ir.ops.nn import conv_out
    if kind == "max" and not x.dtype.is_float:
        x = cx.cast(x, dtypes.f32)  # exact for the narrow integers pooling meets
    fill = -math.inf if kind == "max" else 0.0
    count = np.ones([1] * (nd + 2))
    for i in range(nd):
        ax, n, k, s, d = 2 + i, int(x.shape[2 + i]), kernel[i], strides[i], dil[i]
        out = conv_out(n, k, s, pb[i], pe[i], d, ceil)
        need = (out - 1) * s + (k - 1) * d + 1          # padded length the taps reach
        right = max(need - n - pb[i], 0)
        pads = [0] * (2 * _rank(x))
        pads[2 * ax], pads[2 * ax + 1] = pb[i], right
        xp = cx.op("pad", [x], {"pads": tuple(pads), "value": fill}) if pb[i] or right else x
        acc = None
        for j in range(k):
            tap = cx.op("slice", [xp], {"axis": ax, "start": j * d, "end": j * d + (out - 1) * s + 1, "step": s})
            acc = tap if acc is None else cx.op("maximum" if kind == "max" else "add", [acc, tap])
        x = acc
        pos = np.arange(out)[:, None] * s - pb[i] + np.arange(k)[None, :] * d
        lo, hi = (-pb[i], n + pe[i]) if include else (0, n)
        shape = [1] * (nd + 2)
        shape[ax] = out
        count = count * ((pos >= lo) & (pos < hi)).sum(axis=1).reshape(shape)
    if kind == "max":
        return x
    return x, count


def _pool_any(kind):
    def f(cx, ins, a):
        x = ins[0]
        nd = _rank(x) - 2
        dilated = any(d != 1 for d in a.get("dilations", [1] * nd))
        if nd in (1, 2) and not (kind == "avg" and dilated):  # the 2-D pooling ops
            return _max_pool(cx, ins, a) if kind == "max" else _pool("avg")(cx, ins, a)
        if len([o for o in cx.node.output if o]) > 1:
            raise Unsupported("MaxPool's Indices output (only 2-D)")
        if kind == "max":
            return cx.cast(_pool_nd(cx, x, "max", a), x.dtype)
        s, count = _pool_nd(cx, _float(x, "AveragePool"), "sum", a)
        return cx.op("div", [s, cx.const_array(count.astype(x.dtype.np), x.dtype)])
    return f


CONVERTERS["MaxPool"] = _pool_any("max")
CONVERTERS["AveragePool"] = _pool_any("avg")


@conv("LpPool")
def _lp_pool_any(cx, ins, a):
    x = ins[0]
    if _rank(x) - 2 in (1, 2):
        return _lp_pool_2d(cx, ins, a)
    p = a.get("p", 2)
    xp = cx.op("mul", [x, x]) if p == 2 else cx.op("pow", [cx.op("abs", [x]), _c(cx, float(p), x)])
    s, _ = _pool_nd(cx, _float(xp, "LpPool"), "sum", {**a, "count_include_pad": 1})
    return cx.op("sqrt", [s]) if p == 2 else cx.op("pow", [s, _c(cx, 1.0 / p, s)])


def _batch_norm_training(cx, x, s, b, mean, var, a):
    """BatchNormalization with training_mode=1: normalize with the batch's own statistics
    (biased variance) and blend them into the running ones by ``momentum``."""
    x = _float(x, "BatchNormalization")
    if cx.opset < 14:
        raise Unsupported("BatchNormalization training outputs before opset 14")
    axes = [0] + list(range(2, _rank(x)))
    bm, d, bv = _moments(cx, x, axes)                      # kept dims: [1, C, 1, ...]
    shape = (1, x.shape[1]) + (1,) * (_rank(x) - 2)
    inv = cx.op("rsqrt", [cx.op("add", [bv, _c(cx, a.get("epsilon", 1e-5), x)])])
    y = cx.op("add", [cx.op("mul", [cx.op("mul", [d, inv]), _reshape(cx, s, shape)]), _reshape(cx, b, shape)])
    mom = a.get("momentum", 0.9)
    flat = lambda v: _reshape(cx, v, (x.shape[1],))  # noqa: E731
    blend = lambda run, cur: cx.op("add", [cx.op("mul", [run, _c(cx, mom, run)]),  # noqa: E731
                                           cx.op("mul", [flat(cur), _c(cx, 1.0 - mom, run)])])
    return [y, blend(mean, bm), blend(var, bv)]


@conv("DeformConv")
def _deform_conv(cx, ins, a):
    X, Wt, off = _float(ins[0], "DeformConv"), ins[1], ins[2]
    B = ins[3] if cx.has(3) else None
    mask = ins[4] if cx.has(4) else None
    if _rank(X) != 4:
        raise Unsupported(f"DeformConv of rank {_rank(X)} (only 2-D)")
    if not all(v.type.is_static for v in (X, Wt, off)):
        raise Unsupported("DeformConv over dynamic shapes")
    N, C, H, W = (int(d) for d in X.shape)
    OC, cpg, kh, kw = (int(d) for d in Wt.shape)
    oh, ow = int(off.shape[2]), int(off.shape[3])
    G, groups = a.get("offset_group", 1), a.get("group", 1)
    sh, sw = a.get("strides", [1, 1])
    dh, dw = a.get("dilations", [1, 1])
    pads = a.get("pads", [0, 0, 0, 0])
    if C != cpg * groups or C % G or int(off.shape[1]) != G * kh * kw * 2:
        raise ShapeError(f"DeformConv: X {list(X.shape)}, W {list(Wt.shape)} and offset "
                         f"{list(off.shape)} do not fit group={groups}, offset_group={G}")
    K, O = kh * kw, oh * ow
    k = lambda v: _c(cx, v, X)  # noqa: E731
    off = _reshape(cx, cx.cast(off, X.dtype), (N, G, kh, kw, 2, oh, ow))
    if mask is not None:
        mask = _reshape(cx, cx.cast(mask, X.dtype), (N, G, kh, kw, oh, ow))
    # where tap (i, j) of output (p, q) reads before its offset
    y0 = (np.arange(kh)[:, None] * dh + np.arange(oh)[None, :] * sh - pads[0]).reshape(1, kh, 1, oh, 1)
    x0 = (np.arange(kw)[:, None] * dw + np.arange(ow)[None, :] * sw - pads[1]).reshape(1, 1, kw, 1, ow)
    cg = C // G
    xf = _reshape(cx, _permute(cx, X, (0, 2, 3, 1)), (N * H * W, C))
    base = _reshape(cx, cx.const_array(np.arange(N, dtype=np.int64) * H * W, dtypes.i64), (N, 1, 1, 1, 1))
    cols = []
    for g in range(G):
        off_g = cx.op("slice", [off], {"axis": 1, "start": g, "end": g + 1})
        taps = []
        for c0, length, pos in ((0, H, y0), (1, W, x0)):  # bilinear taps along y, then x
            delta = _reshape(cx, cx.op("slice", [off_g], {"axis": 4, "start": c0, "end": c0 + 1}),
                             (N, kh, kw, oh, ow))
            coord = cx.op("add", [delta, cx.const_array(pos.astype(X.dtype.np), X.dtype)])
            lo = cx.op("floor", [coord])
            t = cx.op("sub", [coord, lo])
            axis = []
            for idx, wgt in ((lo, cx.op("sub", [k(1.0), t])), (cx.op("add", [lo, k(1.0)]), t)):
                ok = cx.op("logical_and", [cx.op("ge", [idx, k(0.0)]), cx.op("le", [idx, k(length - 1.0)])])
                axis.append((cx.cast(cx.op("clamp", [idx], {"min": 0.0, "max": length - 1.0}), dtypes.i64),
                             _where(cx, ok, wgt, k(0.0))))
            taps.append(axis)
        xg = cx.op("slice", [xf], {"axis": 1, "start": g * cg, "end": (g + 1) * cg}) if G > 1 else xf
        acc = None
        for yi, wy in taps[0]:
            for xi, wx in taps[1]:
                flat = cx.op("add", [cx.op("add", [base, cx.op("mul", [yi, cx.const(W, dtypes.i64)])]), xi])
                v = _reshape(cx, cx.op("index_select", [xg, _reshape(cx, flat, (N * K * O,))], {"axis": 0}),
                             (N, kh, kw, oh, ow, cg))
                wgt = cx.op("mul", [wy, wx])
                if mask is not None:
                    wgt = cx.op("mul", [wgt, _reshape(cx, cx.op("slice", [mask], {"axis": 1, "start": g, "end": g + 1}),
                                                      (N, kh, kw, oh, ow))])
                v = cx.op("mul", [v, _unsqueeze(cx, wgt, [5])])
                acc = v if acc is None else cx.op("add", [acc, v])
        cols.append(acc)                                               # [N, kh, kw, oh, ow, cg]
    cols = cols[0] if G == 1 else cx.op("concat", cols, {"axis": 5})   # [N, kh, kw, oh, ow, C]
    cols = _reshape(cx, _permute(cx, cols, (0, 3, 4, 5, 1, 2)), (N, O, C * K))
    # the convolution proper: per group, the sampled columns times the flattened kernel
    ocg = OC // groups
    outs = []
    for gi in range(groups):
        cg_cols = cols if groups == 1 else cx.op("slice", [cols], {"axis": 2, "start": gi * cpg * K,
                                                                   "end": (gi + 1) * cpg * K})
        wg = Wt if groups == 1 else cx.op("slice", [Wt], {"axis": 0, "start": gi * ocg, "end": (gi + 1) * ocg})
        wm = _permute(cx, _reshape(cx, wg, (ocg, cpg * K)), (1, 0))
        outs.append(cx.op("matmul", [cg_cols, wm]))                   # [N, O, ocg]
    y = outs[0] if groups == 1 else cx.op("concat", outs, {"axis": 2})
    if B is not None:
        y = cx.op("add", [y, B])
    return _reshape(cx, _permute(cx, y, (0, 2, 1)), (N, OC, oh, ow))


@conv("BitCast")
def _bitcast(cx, ins, a):
    x, dt = ins[0], onnx_dtype(a["to"])
    if x.dtype.itemsize != dt.itemsize:
        raise ShapeError(f"BitCast from {x.dtype} to {dt}: the widths differ")
    return x if x.dtype is dt else cx.op("bitcast", [x], {"dtype": dt})


# ---------------------------------------------------------------- 3-D convolution

def _conv3d(cx, x, w, b, strides, dil, groups):
    """A 3-D convolution of an already padded x [N, C, D, H, W]: one 2-D convolution per
    depth tap (the output depths folded into the batch), summed."""
    N, C, D, H, W = x.shape
    M, kd = w.shape[0], w.shape[2]
    if not all(isinstance(v, int) for v in (N, D, kd)):
        raise Unsupported("3-D convolution over dynamic batch or depth")
    od = (D - dil[0] * (kd - 1) - 1) // strides[0] + 1
    acc = None
    for j in range(kd):
        xs = cx.op("slice", [x], {"axis": 2, "start": j * dil[0], "end": j * dil[0] + (od - 1) * strides[0] + 1,
                                  "step": strides[0]})
        xs = _reshape(cx, _permute(cx, xs, (0, 2, 1, 3, 4)), (N * od, C, H, W))
        wj = _reshape(cx, cx.op("slice", [w], {"axis": 2, "start": j, "end": j + 1}),
                      (M, w.shape[1], w.shape[3], w.shape[4]))
        y = cx.op("conv2d", [xs, wj], {"stride": tuple(strides[1:]), "padding": (0, 0),
                                       "dilation": tuple(dil[1:]), "groups": groups})
        acc = y if acc is None else cx.op("add", [acc, y])
    y = _permute(cx, _reshape(cx, acc, (N, od, M, acc.shape[2], acc.shape[3])), (0, 2, 1, 3, 4))
    return y if b is None else cx.op("add", [y, _reshape(cx, b, (M, 1, 1, 1))])


@conv("Conv")
def _conv_any(cx, ins, a):
    x, w, b = ins[0], ins[1], ins[2]
    nd = _rank(x) - 2
    if nd != 3:
        return _conv_2d(cx, ins, a)
    kernel = list(a.get("kernel_shape") or w.shape[2:])
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    pb, pe = _spatial_pads(cx, a, x.shape[2:], kernel, strides, dil)
    if any(pb + pe):
        x = cx.op("pad", [x], {"pads": (0, 0, 0, 0) + tuple(v for i in range(nd) for v in (pb[i], pe[i]))})
    return _conv3d(cx, x, w, b, strides, dil, a.get("group", 1))


@conv("ConvTranspose")
def _conv_transpose_any(cx, ins, a):
    x, w, b = ins[0], ins[1], ins[2]
    nd = _rank(x) - 2
    if nd != 3:
        return _conv_transpose_2d(cx, ins, a)
    if "output_shape" in a or a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise Unsupported("3-D ConvTranspose with output_shape or auto_pad SAME")
    if not x.type.is_static:
        raise Unsupported("3-D ConvTranspose over dynamic shapes")
    g = a.get("group", 1)
    kernel = list(a.get("kernel_shape") or w.shape[2:])
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    pads = list(a.get("pads", [0] * (2 * nd)))
    opad = list(a.get("output_padding", [0] * nd))
    # the transpose of a convolution is a convolution of the input spread out by the strides
    # (zeros between elements) and padded by the kernel's reach, with the kernel flipped
    for i in range(nd):
        ax, s, n = 2 + i, strides[i], int(x.shape[2 + i])
        if s > 1:
            shape = list(x.shape)
            y = _reshape(cx, x, shape[:ax + 1] + [1] + shape[ax + 1:])
            p = [0] * (2 * (_rank(x) + 1))
            p[2 * (ax + 1) + 1] = s - 1
            y = _reshape(cx, cx.op("pad", [y], {"pads": tuple(p)}), shape[:ax] + [n * s] + shape[ax + 1:])
            x = cx.op("slice", [y], {"axis": ax, "start": 0, "end": (n - 1) * s + 1})
    lo = [dil[i] * (kernel[i] - 1) - pads[i] for i in range(nd)]
    hi = [dil[i] * (kernel[i] - 1) - pads[nd + i] + opad[i] for i in range(nd)]
    if min(lo + hi) < 0:
        raise Unsupported("ConvTranspose with pads larger than the kernel")
    x = cx.op("pad", [x], {"pads": (0, 0, 0, 0) + tuple(v for i in range(nd) for v in (lo[i], hi[i]))})
    wf = w
    for i in range(nd):
        wf = _reverse(cx, wf, 2 + i)
    cin, coutg = w.shape[0], w.shape[1]
    wf = _reshape(cx, wf, (g, cin // g, coutg, *kernel))
    wf = _reshape(cx, _permute(cx, wf, (0, 2, 1, 3, 4, 5)), (g * coutg, cin // g, *kernel))
    return _conv3d(cx, x, wf, b, [1] * nd, dil, g)
