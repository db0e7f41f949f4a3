"""ONNX converters, continued from onnx_ops.py: Einsum, Det, pooling extras, bit manipulation and signal processing (DFT, STFT, windows)."""
from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from ..ir import dtypes
from .onnx import Unsupported, onnx_dtype
from .onnx_ops import (
    CONVERTERS, _axis, _c, _float, _from_2d, _permute, _pool, _rank, _reshape, _spatial_pads,
    _to_2d, _unsqueeze, _where, conv)
from .onnx_ops_index import _iota, _scatter_flat


# ---------------------------------------------------------------- einsum, det, sequences, pooling extras

def _einsum_terms(eq, ranks):
    """Operand and output labels of an einsum equation; the dims an ellipsis stands for get
    labels chr(0x100 + k), k counted from the right, so that they broadcast like numpy."""
    eq = eq.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ShapeError(f"Einsum equation {eq!r} names {len(terms)} operands, got {len(ranks)}")
    ell = lambda e: [chr(0x100 + k) for k in reversed(range(e))]  # noqa: E731
    out_terms, n_ell = [], 0
    for t, r in zip(terms, ranks):
        e = r - (len(t) - 3) if "..." in t else 0
        labels = list(t.replace("...", "\0"))
        labels = [x for lab in labels for x in (ell(e) if lab == "\0" else [lab])]
        if len(labels) != r or not all(x.isalpha() or ord(x) >= 0x100 for x in labels):
            raise ShapeError(f"Einsum term {t!r} does not fit an operand of rank {r}")
        out_terms.append(labels)
        n_ell = max(n_ell, e)
    if arrow:
        out = [x for lab in rhs.replace("...", "\0") for x in (ell(n_ell) if lab == "\0" else [lab])]
    else:  # implicit output: the ellipsis dims, then the labels used once, sorted
        counts: dict = {}
        for labels in out_terms:
            for x in labels:
                counts[x] = counts.get(x, 0) + 1
        out = ell(n_ell) + sorted(x for x, c in counts.items() if c == 1 and x.isalpha())
    return out_terms, out


def _einsum_diagonal(cx, x, labels):
    """Fold repeated labels of one operand (x[i, i] -> its diagonal) with an identity mask."""
    while len(set(labels)) < len(labels):
        lab = next(x_ for x_ in labels if labels.count(x_) > 1)
        p = labels.index(lab)
        q = labels.index(lab, p + 1)
        n = x.shape[p]
        shape = [1] * _rank(x)
        shape[p], shape[q] = n, n
        eye = cx.const_array(np.eye(n, dtype=x.dtype.np).reshape(shape), x.dtype)
        x = cx.op("sum", [_where(cx, cx.op("ne", [eye, _c(cx, 0, eye)]), x, _c(cx, 0, x))],
                  {"axes": (q,), "keepdims": False})
        labels = labels[:q] + labels[q + 1:]
    return x, labels


@conv("Einsum")
def _einsum(cx, ins, a):
    ops = [v for v in ins if v is not None]
    terms, out = _einsum_terms(a["equation"], [_rank(v) for v in ops])
    summed = [lab for t in terms for lab in t if lab not in out]
    order = list(out) + list(dict.fromkeys(summed))
    # every operand laid out over all labels (1 where it lacks one), multiplied, and the
    # labels not in the output summed away
    prod_ = None
    for v, labels in zip(ops, terms):
        v, labels = _einsum_diagonal(cx, v, labels)
        mine = [lab for lab in order if lab in labels]
        v = _permute(cx, v, [labels.index(lab) for lab in mine])
        v = _reshape(cx, v, [v.shape[mine.index(lab)] if lab in mine else 1 for lab in order])
        prod_ = v if prod_ is None else cx.op("mul", [prod_, v])
    if len(order) > len(out):
        prod_ = cx.op("sum", [prod_], {"axes": tuple(range(len(out), len(order))), "keepdims": False})
    return prod_


def _elem(cx, m, i, j):
    """m[..., i, j] as a tensor of m's batch shape."""
    r = _rank(m)
    e = cx.op("slice", [cx.op("slice", [m], {"axis": r - 2, "start": i, "end": i + 1})],
              {"axis": r - 1, "start": j, "end": j + 1})
    return _reshape(cx, e, m.shape[:-2])


def _det_of(cx, m, n):
    if n == 1:
        return _elem(cx, m, 0, 0)
    if n == 2:
        return cx.op("sub", [cx.op("mul", [_elem(cx, m, 0, 0), _elem(cx, m, 1, 1)]),
                             cx.op("mul", [_elem(cx, m, 0, 1), _elem(cx, m, 1, 0)])])
    r = _rank(m)
    rows = cx.op("slice", [m], {"axis": r - 2, "start": 1, "end": n})
    acc = None
    for j in range(n):  # Laplace expansion along the first row
        cols = cx.const_array(np.array([c for c in range(n) if c != j], np.int64), dtypes.i64)
        term = cx.op("mul", [_elem(cx, m, 0, j),
                             _det_of(cx, cx.op("index_select", [rows, cols], {"axis": r - 1}), n - 1)])
        acc = term if acc is None else cx.op("add" if j % 2 == 0 else "sub", [acc, term])
    return acc


@conv("Det")
def _det(cx, ins, a):
    m = _float(ins[0], "Det")
    n = m.shape[-1]
    if _rank(m) < 2 or m.shape[-2] != n:
        raise ShapeError(f"Det needs square matrices, got shape {list(m.shape)}")
    if not isinstance(n, int) or n > 4:
        # cofactor expansion grows as n!; larger matrices would need an LU kernel
        raise Unsupported(f"Det of {n}x{n} matrices (up to 4x4)")
    return _det_of(cx, m, n)


@conv("ReverseSequence")
def _reverse_sequence(cx, ins, a):
    x, lens = ins[0], ins[1]
    r = _rank(x)
    bax, tax = _axis(a.get("batch_axis", 1), r), _axis(a.get("time_axis", 0), r)
    if r < 2 or bax == tax:
        raise ShapeError("ReverseSequence needs distinct batch and time axes")
    T = x.shape[tax]
    if not isinstance(T, int):
        raise Unsupported("ReverseSequence along a dynamic time axis")
    shape = [1] * r
    shape[bax] = x.shape[bax]
    n = _reshape(cx, cx.cast(lens, dtypes.i64), shape)
    t = _iota(cx, T, r, tax)
    # position t of sequence b reads n[b] - 1 - t inside its length, itself beyond it
    src = _where(cx, cx.op("lt", [t, n]), cx.op("sub", [cx.op("sub", [n, cx.const(1, dtypes.i64)]), t]), t)
    return cx.op("gather", [x, cx.op("expand", [src], {"shape": tuple(x.shape)})], {"axis": tax})


@conv("LRN")
def _lrn(cx, ins, a):
    x = _float(ins[0], "LRN")
    size = a["size"]
    alpha, beta, bias = a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0)
    C = x.shape[1]
    lo = (size - 1) // 2
    pads = [0] * (2 * _rank(x))
    pads[2], pads[3] = lo, size - 1 - lo
    sq = cx.op("pad", [cx.op("mul", [x, x])], {"pads": tuple(pads)})
    # the sum of squares over the channel window [c - lo, c + size - 1 - lo]
    s = None
    for k in range(size):
        part = cx.op("slice", [sq], {"axis": 1, "start": k, "end": k + C})
        s = part if s is None else cx.op("add", [s, part])
    den = cx.op("add", [_c(cx, bias, x), cx.op("mul", [s, _c(cx, alpha / size, x)])])
    return cx.op("div", [x, cx.op("pow", [den, _c(cx, beta, x)])])


def _lp_pool_2d(cx, ins, a):
    x = _float(ins[0], "LpPool")
    nd = _rank(x) - 2
    if a.get("ceil_mode", 0):
        raise Unsupported("LpPool with ceil_mode")
    kernel = list(a["kernel_shape"])
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    pb, pe = _spatial_pads(cx, a, x.shape[2:], kernel, strides, dil)
    p = a.get("p", 2)
    xp = cx.op("mul", [x, x]) if p == 2 else cx.op("pow", [cx.op("abs", [x]), _c(cx, float(p), x)])
    x2 = _to_2d(cx, xp, nd)
    if nd == 1:
        kernel, strides, dil, pb, pe = [1] + kernel, [1] + strides, [1] + dil, [0] + pb, [0] + pe
    if pb != pe:
        x2 = cx.op("pad", [x2], {"pads": (0, 0, 0, 0, pb[0], pe[0], pb[1], pe[1])})
        pb = [0, 0]
    # the window sums of |x|^p: a depthwise convolution with a kernel of ones (it has
    # strides, padding and dilations, which the pooling ops lack in part)
    C = x.shape[1]
    ones = cx.const_array(np.ones((C, 1) + tuple(kernel), x.dtype.np), x.dtype)
    s = cx.op("conv2d", [x2, ones], {"stride": tuple(strides), "padding": tuple(pb),
                                     "dilation": tuple(dil), "groups": C})
    y = cx.op("sqrt", [s]) if p == 2 else cx.op("pow", [s, _c(cx, 1.0 / p, s)])
    return _from_2d(cx, y, nd)


@conv("MaxUnpool")
def _max_unpool(cx, ins, a):
    x, idx = ins[0], ins[1]
    if not x.type.is_static:
        raise Unsupported("MaxUnpool of a dynamic shape")
    nd = _rank(x) - 2
    kernel = list(a["kernel_shape"])
    strides = list(a.get("strides", [1] * nd))
    pads = list(a.get("pads", [0] * (2 * nd)))
    shape = list(x.shape[:2]) + [(x.shape[2 + k] - 1) * strides[k] - pads[k] - pads[nd + k] + kernel[k]
                                 for k in range(nd)]
    total = int(np.prod(shape, dtype=np.int64))
    m = int(np.prod(x.shape, dtype=np.int64))
    # the indices are flat positions in the unpooled shape (as MaxPool's Indices output gives
    # them); an explicit output_shape only pads that result at the end of each dim
    zeros = cx.op("full", [], {"shape": (total, 1), "value": 0.0, "dtype": x.dtype})
    y = _reshape(cx, _scatter_flat(cx, zeros, _reshape(cx, cx.cast(idx, dtypes.i64), (m,)),
                                   _reshape(cx, x, (m, 1)), "none"), shape)
    if cx.has(2):
        out = cx.ints(2, "output_shape")
        if len(out) != len(shape) or any(o < s for o, s in zip(out, shape)):
            raise ShapeError(f"MaxUnpool: output_shape {out} is smaller than the unpooled {shape}")
        if list(out) != shape:
            y = cx.op("pad", [y], {"pads": tuple(v for o, s in zip(out, shape) for v in (0, o - s))})
    return y


def _max_pool_indices(cx, x, a):
    """MaxPool's values and Indices: every window tap gathered as a strided slice of the
    padded input, the first maximum among the taps, and its flat position in ``x``."""
    nd = _rank(x) - 2
    if nd != 2 or not x.type.is_static:
        raise Unsupported("MaxPool's Indices output (only 2-D, static shapes)")
    if a.get("ceil_mode", 0):
        raise Unsupported("MaxPool's Indices output with ceil_mode")
    N, C, H, W = (int(d) for d in x.shape)
    kernel = list(a["kernel_shape"])
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    pb, pe = _spatial_pads(cx, a, x.shape[2:], kernel, strides, dil)
    xf = x if x.dtype.is_float else cx.cast(x, dtypes.f32)
    xp = cx.op("pad", [xf], {"pads": (0, 0, 0, 0, pb[0], pe[0], pb[1], pe[1]), "value": -math.inf})
    OH = (H + pb[0] + pe[0] - (kernel[0] - 1) * dil[0] - 1) // strides[0] + 1
    OW = (W + pb[1] + pe[1] - (kernel[1] - 1) * dil[1] - 1) // strides[1] + 1
    taps, pos = [], []
    oh, ow = np.meshgrid(np.arange(OH), np.arange(OW), indexing="ij")
    col_major = a.get("storage_order", 0) == 1
    for r in range(kernel[0]):
        for s in range(kernel[1]):
            h0, w0 = r * dil[0], s * dil[1]
            t = cx.op("slice", [xp], {"axis": 2, "start": h0, "end": h0 + (OH - 1) * strides[0] + 1,
                                      "step": strides[0]})
            t = cx.op("slice", [t], {"axis": 3, "start": w0, "end": w0 + (OW - 1) * strides[1] + 1,
                                     "step": strides[1]})
            taps.append(_unsqueeze(cx, t, [4]))
            h, w = oh * strides[0] + h0 - pb[0], ow * strides[1] + w0 - pb[1]
            pos.append(w * H + h if col_major else h * W + w)
    stacked = taps[0] if len(taps) == 1 else cx.op("concat", taps, {"axis": 4})   # [N, C, OH, OW, T]
    vals = cx.op("max", [stacked], {"axes": (4,), "keepdims": False})
    best = cx.op("argmax", [stacked], {"axis": 4, "keepdims": True})
    table = cx.const_array(np.stack(pos, axis=-1).reshape(1, 1, OH, OW, len(pos)).astype(np.int64), dtypes.i64)
    where = cx.op("gather", [cx.op("expand", [table], {"shape": (N, C, OH, OW, len(pos))}), best], {"axis": 4})
    plane = cx.const_array((np.arange(N * C, dtype=np.int64) * H * W).reshape(N, C, 1, 1), dtypes.i64)
    idx = cx.op("add", [_reshape(cx, where, (N, C, OH, OW)), plane])
    return [cx.cast(vals, x.dtype), idx]


def _max_pool(cx, ins, a):
    if len([o for o in cx.node.output if o]) > 1:
        return _max_pool_indices(cx, ins[0], a)
    return _pool("max")(cx, ins, a)



# ---------------------------------------------------------------- bit manipulation

def _bitwise_conv(op):
    def f(cx, ins, a):
        xs = [v for v in ins if v is not None]
        if xs[0].dtype is dtypes.bool_:
            raise Unsupported(f"{cx.node.op_type} on bool inputs")
        if op == "shift":
            d = a.get("direction", "")
            if d not in ("LEFT", "RIGHT"):
                raise ShapeError(f"BitShift direction must be LEFT or RIGHT, got {d!r}")
            return cx.op("bitwise", xs, {"op": "shl" if d == "LEFT" else "shr"})
        return cx.op("bitwise", xs, {"op": op})
    return f


for _t, _k in {"BitwiseAnd": "and", "BitwiseOr": "or", "BitwiseXor": "xor", "BitwiseNot": "not",
               "BitShift": "shift"}.items():
    CONVERTERS[_t] = _bitwise_conv(_k)


# ---------------------------------------------------------------- signal processing
#
# Window functions and mel filters depend only on sizes, so they are constants. A DFT along
# one axis is linear in the (real, imaginary) input: two matmuls with cos / sin matrices
# built at compile time (O(n^2), exact to rounding, and the GEMM kernel does the work).

def _window(a0, a1, a2=0.0):
    def f(cx, ins, a):
        n = int(cx.scalar(0))
        if n < 1:
            raise Unsupported(f"{cx.node.op_type} of size {n} (an empty tensor)")
        d = n if a.get("periodic", 1) else n - 1
        k = np.arange(n, dtype=np.float64)
        w = a0 - a1 * np.cos(2 * np.pi * k / d) + a2 * np.cos(4 * np.pi * k / d) if d else np.ones(1)
        dt = onnx_dtype(a.get("output_datatype", 1))
        return cx.const_array(w.astype(dt.np), dt)
    return f


CONVERTERS["HannWindow"] = _window(0.5, 0.5)
CONVERTERS["HammingWindow"] = _window(25 / 46, 21 / 46)
CONVERTERS["BlackmanWindow"] = _window(0.42, 0.5, 0.08)


def _dft_last(cx, re, im, length, onesided, inverse):
    """DFT of length ``length`` along the last axis of re (+ i im; im may be None): the
    input is cut or zero-padded to that length. Returns (real, imag or None) outputs."""
    n_in = int(re.shape[-1])
    if inverse and onesided:
        # the inverse of a one-sided spectrum is real: bins 0 < k < length/2 count twice
        # (their mirrored conjugates), the rest once
        n_use = min(n_in, length // 2 + 1)
        k = np.arange(n_in)[:, None]
        t = 2 * np.pi * k * np.arange(length)[None, :] / length
        c = np.where((k == 0) | (2 * k == length), 1.0, 2.0) * (k < n_use) / length
        out = cx.op("matmul", [re, cx.const_array((c * np.cos(t)).astype(re.dtype.np), re.dtype)])
        if im is not None:
            out = cx.op("sub", [out, cx.op("matmul", [im, cx.const_array((c * np.sin(t)).astype(re.dtype.np),
                                                                         re.dtype)])])
        return out, None
    bins = length // 2 + 1 if onesided else length
    k = np.arange(n_in)[:, None]
    t = 2 * np.pi * k * np.arange(bins)[None, :] / length
    scale = (k < length) / (length if inverse else 1.0)  # rows past the length are cut off
    sign = 1.0 if inverse else -1.0                       # e^{+-i t}
    C = cx.const_array((scale * np.cos(t)).astype(re.dtype.np), re.dtype)
    S = cx.const_array((sign * scale * np.sin(t)).astype(re.dtype.np), re.dtype)
    out_re, out_im = cx.op("matmul", [re, C]), cx.op("matmul", [re, S])
    if im is not None:
        out_re = cx.op("sub", [out_re, cx.op("matmul", [im, S])])
        out_im = cx.op("add", [out_im, cx.op("matmul", [im, C])])
    return out_re, out_im


def _complex_parts(cx, x):
    """[..., 1] real or [..., 2] (real, imag) -> the parts without that last axis."""
    c = x.shape[-1]
    if c not in (1, 2):
        raise ShapeError(f"{cx.node.op_type}: the last dim must be 1 (real) or 2 (complex), got {c}")
    if c == 1:
        return _reshape(cx, x, x.shape[:-1]), None
    r = _rank(x)
    re, im = (cx.op("slice", [x], {"axis": r - 1, "start": k, "end": k + 1}) for k in (0, 1))
    return _reshape(cx, re, x.shape[:-1]), _reshape(cx, im, x.shape[:-1])


def _stack_complex(cx, re, im):
    parts = [_unsqueeze(cx, re, [_rank(re)])]
    if im is not None:
        parts.append(_unsqueeze(cx, im, [_rank(im)]))
    return parts[0] if len(parts) == 1 else cx.op("concat", parts, {"axis": _rank(re)})


@conv("DFT")
def _dft(cx, ins, a):
    x = _float(ins[0], "DFT")
    if not x.type.is_static:
        raise Unsupported("DFT of a dynamic shape")
    r = _rank(x)
    if cx.opset >= 20:
        ax = int(cx.scalar(2, -2))
    else:
        ax = a.get("axis", 1)
    ax = _axis(ax, r)
    if ax == r - 1:
        raise ShapeError("DFT: the axis cannot be the last (real/imaginary) dim")
    inverse, onesided = bool(a.get("inverse", 0)), bool(a.get("onesided", 0))
    n = int(x.shape[ax])
    default = 2 * (n - 1) if inverse and onesided else n
    length = int(cx.scalar(1, default)) if cx.has(1) else default
    re, im = _complex_parts(cx, x)
    perm = [d for d in range(r - 1) if d != ax] + [ax]
    inv = [perm.index(d) for d in range(r - 1)]
    yr, yi = _dft_last(cx, _permute(cx, re, perm), None if im is None else _permute(cx, im, perm),
                       length, onesided, inverse)
    return _stack_complex(cx, _permute(cx, yr, inv), None if yi is None else _permute(cx, yi, inv))


@conv("STFT")
def _stft(cx, ins, a):
    x = _float(ins[0], "STFT")
    if not x.type.is_static:
        raise Unsupported("STFT of a dynamic shape")
    step = int(cx.scalar(1))
    window = ins[2] if cx.has(2) else None
    fl = int(cx.scalar(3)) if cx.has(3) else (int(window.shape[0]) if window is not None else None)
    if fl is None:
        raise ShapeError("STFT needs a window or a frame_length")
    b, n = int(x.shape[0]), int(x.shape[1])
    frames = 1 + (n - fl) // step
    if frames < 1 or step < 1:
        raise ShapeError(f"STFT: frame_length {fl} and step {step} fit no frame in a signal of {n}")
    idx = (np.arange(frames)[:, None] * step + np.arange(fl)[None, :]).reshape(-1)
    fr = cx.op("index_select", [x, cx.const_array(idx.astype(np.int64), dtypes.i64)], {"axis": 1})
    fr = _reshape(cx, fr, (b, frames, fl, x.shape[2]))
    re, im = _complex_parts(cx, fr)                                        # [b, frames, fl]
    if window is not None:
        re = cx.op("mul", [re, window])
        im = None if im is None else cx.op("mul", [im, window])
    yr, yi = _dft_last(cx, re, im, fl, bool(a.get("onesided", 1)), False)
    return _stack_complex(cx, yr, yi)


@conv("AffineGrid")
def _affine_grid(cx, ins, a):
    theta = _float(ins[0], "AffineGrid")
    size = cx.ints(1, "size")
    spatial = [int(s) for s in size[2:]]
    nd = len(spatial)
    if nd not in (2, 3) or tuple(theta.shape[1:]) != (nd, nd + 1):
        raise ShapeError(f"AffineGrid: theta {list(theta.shape)} does not fit size {size}")
    # the base grid: normalized coordinates of every output point, (x, y[, z], 1) with x
    # running along the last dim
    axes = []
    for d in spatial:
        if a.get("align_corners", 0):
            axes.append(np.linspace(-1.0, 1.0, d) if d > 1 else np.zeros(1))
        else:
            axes.append((2 * np.arange(d) + 1) / d - 1)
    mesh = np.meshgrid(*axes, indexing="ij")
    base = np.stack([m.reshape(-1) for m in reversed(mesh)] + [np.ones(mesh[0].size)], axis=1)
    N = theta.shape[0]
    pts = cx.const_array(base.reshape(1, -1, nd + 1).astype(theta.dtype.np), theta.dtype)
    grid = cx.op("matmul", [pts, _permute(cx, theta, (0, 2, 1))])   # [N, points, nd]
    return _reshape(cx, grid, (N, *spatial, nd))
