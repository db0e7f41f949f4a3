"""ONNX converters, continued from onnx_ops.py: Resize and Upsample: interpolation along each resized axis, weights built at compile time."""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..ir import dtypes
from ..ir.symbolic import SymExpr
from .onnx import Unsupported
from .onnx_ops import _axis, _c, _permute, _rank, _where, conv


# ---------------------------------------------------------------- Resize / Upsample

def _const_floats(cx, i, what):
    """Input ``i`` as a float64 numpy vector, known at compile time (NeedsConstant if not)."""
    d = cx.const_value(i)
    if d is None:
        cx.ints(i, what)  # raises NeedsConstant naming the graph inputs it comes from
    return np.asarray(d, dtype=np.float64).reshape(-1)


def _source_coords(n_in, n_out, scale, ctm, roi):
    """Input coordinate of each output position along one axis (ONNX Resize's
    coordinate_transformation_mode), and which positions fall outside a tf_crop_and_resize
    box (those take the extrapolation value)."""
    y = np.arange(n_out, dtype=np.float64)
    length = scale * n_in  # the output length before rounding: the modes divide by it
    outside = np.zeros(n_out, dtype=bool)
    if ctm == "align_corners":
        x = np.zeros(n_out) if length == 1 else y * (n_in - 1) / (length - 1)
    elif ctm == "asymmetric":
        x = y / scale
    elif ctm == "tf_crop_and_resize":
        lo, hi = roi
        x = np.full(n_out, (hi - lo) * (n_in - 1) / 2) if length == 1 else \
            y * (hi - lo) * (n_in - 1) / (length - 1)
        x = x + lo * (n_in - 1)
        outside = (x < 0) | (x > n_in - 1)
    elif ctm == "pytorch_half_pixel":
        x = np.full(n_out, -0.5) if length == 1 else (y + 0.5) / scale - 0.5
    elif ctm == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif ctm == "half_pixel_symmetric":
        # centres the rounded output canvas on the input (differs from half_pixel only
        # when scale * n_in is not an integer)
        x = n_in / 2 * (1 - n_out / length) + (y + 0.5) / scale - 0.5
    else:
        raise Unsupported(f"Resize coordinate_transformation_mode {ctm!r}")
    return x, outside


def _resize_taps(ratio, scale, mode, a, antialias):
    """Tap offsets (relative to the pixel left of the source coordinate) and their weights,
    [n_out, taps], for one axis. ``ratio`` in (0, 1] is the distance past that pixel."""
    if mode == "nearest":
        nm = a.get("nearest_mode", "round_prefer_floor")
        pick = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
                "floor": np.zeros_like(ratio, bool), "ceil": np.ones_like(ratio, bool)}.get(nm)
        if pick is None:
            raise Unsupported(f"Resize nearest_mode {nm!r}")
        pick = pick | (ratio == 1)  # an exact hit takes that pixel in every rounding mode
        return np.array([0, 1]), np.stack([~pick, pick], axis=1).astype(np.float64)
    # antialiasing widens the kernel by 1/scale when downsampling
    s = min(scale, 1.0) if antialias else 1.0
    reach = 2 if mode == "cubic" else 1
    first = int(np.floor(-reach / s)) + 1
    offs = np.arange(first, 1 - first + 1)
    d = np.abs(offs[None, :] - ratio[:, None]) * s
    if mode == "linear":
        w = np.clip(1 - d, 0, 1)
    else:  # the Keys cubic kernel with parameter A
        A = a.get("cubic_coeff_a", -0.75)
        w = np.where(d <= 1, ((A + 2) * d - (A + 3)) * d * d + 1,
                     np.where(d < 2, ((A * d - 5 * A) * d + 8 * A) * d - 4 * A, 0.0))
    if antialias:
        w = w / w.sum(axis=1, keepdims=True)
    return offs, w


def _resize_matrix(n_in, n_out, scale, mode, a, roi, antialias, opset):
    """Resize along one axis as a dense [n_out, n_in] matrix (the interpolation is linear in
    the input), plus the mask of rows that take the extrapolation value."""
    ctm = a.get("coordinate_transformation_mode", "half_pixel" if opset >= 11 else "asymmetric")
    x, outside = _source_coords(n_in, n_out, scale, ctm, roi)
    left = np.floor(x)
    ratio = x - left
    exact = ratio == 0
    left, ratio = np.where(exact, left - 1, left), np.where(exact, 1.0, ratio)  # ratio in (0, 1]
    offs, w = _resize_taps(ratio, scale, mode, a, antialias)
    idx = left[:, None].astype(np.int64) + offs[None, :]
    if a.get("exclude_outside", 0):
        w = np.where((idx < 0) | (idx >= n_in), 0.0, w)
        tot = w.sum(axis=1, keepdims=True)
        w = w / np.where(tot == 0, 1.0, tot)
    m = np.zeros((n_out, n_in))
    rows = np.repeat(np.arange(n_out), len(offs))
    np.add.at(m, (rows, np.clip(idx, 0, n_in - 1).reshape(-1)), w.reshape(-1))  # edge padding
    m[outside] = 0.0
    return m, outside


def _resize_axis(cx, x, ax, m, outside, mode, extrapolation):
    """Apply one axis' resize matrix m [n_out, n_in]. Nearest is one gather (exact for every
    dtype). Otherwise each output reads a few neighbours (2 taps for linear, 4 for cubic,
    more when antialiasing widens the kernel): one gather and multiply-add per tap, or a
    matmul with the axis moved last when the rows are dense anyway."""
    if mode == "nearest" and not outside.any():
        src = cx.const_array(m.argmax(axis=1).astype(np.int64), dtypes.i64)
        return cx.op("index_select", [x, src], {"axis": ax})
    if not x.dtype.is_float:
        raise Unsupported(f"Resize mode {mode!r} on {x.dtype} inputs")
    r = _rank(x)
    along = [1] * r
    along[ax] = m.shape[0]
    nz = m != 0
    taps = int(nz.sum(axis=1).max())
    if 0 < taps and 2 * taps <= m.shape[1]:
        cols = np.argsort(~nz, axis=1, kind="stable")[:, :taps]  # each row's taps first
        w = np.take_along_axis(m, cols, axis=1)                  # (0 where a row has fewer)
        y = None
        for t in range(taps):
            g = cx.op("index_select", [x, cx.const_array(cols[:, t].astype(np.int64), dtypes.i64)], {"axis": ax})
            term = cx.op("mul", [g, cx.const_array(w[:, t].reshape(along).astype(x.dtype.np), x.dtype)])
            y = term if y is None else cx.op("add", [y, term])
    else:
        perm = [k for k in range(r) if k != ax] + [ax]
        y = cx.op("matmul", [_permute(cx, x, perm), cx.const_array(m.T.astype(x.dtype.np), x.dtype)])
        y = _permute(cx, y, [perm.index(k) for k in range(r)])
    if outside.any():
        y = _where(cx, cx.const_array(outside.reshape(along)), _c(cx, extrapolation, y), y)
    return y


@conv("Resize", "Upsample")
def _resize(cx, ins, a):
    x = ins[0]
    r = _rank(x)
    shape = list(x.shape)

    def static(ax):  # only the resized dims need a known size
        if not isinstance(shape[ax], int):
            raise Unsupported(f"Resize along dynamic dim {ax} (the interpolation weights are "
                              f"built at compile time)")
        return shape[ax]
    mode = a.get("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear", "cubic"):
        raise Unsupported(f"Resize mode {mode!r}")
    mode = "linear" if mode == "bilinear" else mode
    axes = [_axis(v, r) for v in a.get("axes", range(r))]
    if len(set(axes)) != len(axes):
        raise ShapeError(f"Resize axes {list(a['axes'])} repeat an axis")
    old = cx.opset < 11 or cx.node.op_type == "Upsample"
    if old:
        scales_in = 1 if cx.node.op_type == "Resize" or cx.opset >= 9 else None
        scales = list(a["scales"]) if scales_in is None else list(_const_floats(cx, scales_in, "scales"))
        sizes, roi = None, None
        a = {**a, "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    else:
        roi = _const_floats(cx, 1, "roi") if cx.has(1) else np.zeros(0)
        scales = list(_const_floats(cx, 2, "scales")) if cx.has(2) else []
        sizes = cx.ints(3, "sizes") if cx.has(3) else None
        if not scales and sizes is None:
            raise ShapeError("Resize needs scales or sizes")
    full_scale = [1.0] * r
    out = list(shape)
    if sizes is not None:
        if len(sizes) != len(axes):
            raise ShapeError(f"Resize: {len(sizes)} sizes for {len(axes)} axes")
        policy = a.get("keep_aspect_ratio_policy", "stretch")
        if policy not in ("stretch", "not_larger", "not_smaller"):
            raise Unsupported(f"Resize keep_aspect_ratio_policy {policy!r}")
        # a size equal to the input's (a symbolic batch passed through) leaves that dim alone
        moved = [(ax, s) for ax, s in zip(axes, sizes) if policy != "stretch" or s != shape[ax]]
        if any(isinstance(s, SymExpr) for _, s in moved):
            raise Unsupported("Resize to a symbolic size")
        ratios = {ax: s / static(ax) for ax, s in moved}
        if policy != "stretch":
            s = (min if policy == "not_larger" else max)(ratios.values())
            ratios = {ax: s for ax in ratios}
            moved = [(ax, int(s * shape[ax] + 0.5)) for ax, _ in moved]  # round half up
        for ax, s in moved:
            full_scale[ax], out[ax] = ratios[ax], int(s)
    else:
        if len(scales) != len(axes):
            raise ShapeError(f"Resize: {len(scales)} scales for {len(axes)} axes")
        for ax, s in zip(axes, scales):
            if s <= 0:
                raise ShapeError(f"Resize: scale {s} must be positive")
            if s != 1.0:
                full_scale[ax], out[ax] = s, int(s * static(ax))
    box = {ax: (0.0, 1.0) for ax in range(r)}
    if roi is not None and roi.size:
        k = len(axes)
        if roi.size != 2 * k:
            raise ShapeError(f"Resize: roi has {roi.size} values, wants {2 * k}")
        box.update({ax: (roi[i], roi[k + i]) for i, ax in enumerate(axes)})
    antialias = bool(a.get("antialias", 0))
    ctm = a.get("coordinate_transformation_mode", "half_pixel")
    for ax in axes:
        if out[ax] == shape[ax] and full_scale[ax] == 1.0 and (
                ctm != "tf_crop_and_resize" or box[ax] == (0.0, 1.0)):
            continue  # identity along this axis
        if out[ax] < 1:
            raise Unsupported("Resize to an empty tensor")
        m, outside = _resize_matrix(static(ax), out[ax], full_scale[ax], mode, a, box[ax],
                                    antialias, 11 if not old else 10)
        x = _resize_axis(cx, x, ax, m, outside, mode, a.get("extrapolation_value", 0.0))
    return x
