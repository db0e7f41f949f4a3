"""Data-movement ops: reshape, permute, expand, slice, concat, pad, gather/embedding."""
from __future__ import annotations

import numpy as np

from ... import errors
from .. import dtypes
from ..graph import TensorType
from ..symbolic import floordiv, prod
from .registry import Attr, norm_axis, register, same_dtype


def _reshape_infer(ts, a):
    t, shape = ts[0], a["shape"]
    if prod(shape) != prod(t.shape):
        raise errors.ShapeError(f"reshape: cannot view {list(map(str, t.shape))} "
                                f"as {list(map(str, shape))} (element counts differ)")
    return [TensorType(t.dtype, shape)]


register("reshape", _reshape_infer, lambda xs, a: xs[0].reshape(a["shape"]),
         attrs={"shape": Attr("dims")}, category="shape")


def _permute_infer(ts, a):
    t, perm = ts[0], a["perm"]
    if sorted(perm) != list(range(t.rank)):
        raise errors.ShapeError(f"permute: {list(perm)} is not a permutation of rank {t.rank}")
    return [TensorType(t.dtype, tuple(t.shape[p] for p in perm))]


register("permute", _permute_infer, lambda xs, a: np.transpose(xs[0], a["perm"]),
         attrs={"perm": Attr("ints")}, category="shape")


def _expand_infer(ts, a):
    t, shape = ts[0], a["shape"]
    lead = len(shape) - t.rank
    if lead < 0:
        raise errors.ShapeError(f"expand: target rank {len(shape)} < input rank {t.rank}")
    for i, d in enumerate(t.shape):
        if d != 1 and d != shape[lead + i]:
            raise errors.ShapeError(f"expand: dim {i} of size {d} cannot expand to {shape[lead + i]}")
    return [TensorType(t.dtype, tuple(shape))]


register("expand", _expand_infer, lambda xs, a: np.broadcast_to(xs[0], a["shape"]).copy(),
         attrs={"shape": Attr("dims")}, category="shape")


def _slice_infer(ts, a):
    t = ts[0]
    ax = norm_axis(a["axis"], t.rank, "slice")
    start, end, step = a["start"], a["end"], a["step"]
    if step < 1:
        raise errors.ShapeError("slice: step must be >= 1")
    for v in (start, end):
        if isinstance(v, int) and v < 0:
            raise errors.ShapeError("slice: start/end must be normalized to >= 0")
    n = floordiv(end - start + step - 1, step)
    shape = list(t.shape)
    shape[ax] = n
    return [TensorType(t.dtype, tuple(shape))]


def _slice_ref(xs, a):
    x = xs[0]
    idx = [slice(None)] * x.ndim
    idx[a["axis"]] = slice(a["start"], a["end"], a["step"])
    return x[tuple(idx)]


register("slice", _slice_infer, _slice_ref,
         attrs={"axis": Attr("int"), "start": Attr("dim", 0), "end": Attr("dim"), "step": Attr("int", 1)},
         category="shape", doc="x[start:end:step] along axis; 0 <= start <= end <= dim")


def _concat_infer(ts, a):
    dt = same_dtype("concat", ts)
    rank = ts[0].rank
    ax = norm_axis(a["axis"], rank, "concat")
    out = list(ts[0].shape)
    for t in ts[1:]:
        if t.rank != rank or any(t.shape[i] != out[i] for i in range(rank) if i != ax):
            raise errors.ShapeError(f"concat on axis {ax}: shapes differ off that axis")
        out[ax] = out[ax] + t.shape[ax]
    return [TensorType(dt, tuple(out))]


register("concat", _concat_infer, lambda xs, a: np.concatenate(xs, axis=a["axis"]),
         attrs={"axis": Attr("int")}, arity=(1, None), category="shape")


def _pad_infer(ts, a):
    t, pads = ts[0], a["pads"]
    if len(pads) != 2 * t.rank:
        raise errors.ShapeError(f"pad: needs {2 * t.rank} pads (before, after per dim), got {len(pads)}")
    return [TensorType(t.dtype, tuple(d + pads[2 * i] + pads[2 * i + 1] for i, d in enumerate(t.shape)))]


def _pad_ref(xs, a):
    x, p = xs[0], a["pads"]
    if min(p) < 0:  # negative pads crop
        sl = tuple(slice(-p[2 * i] if p[2 * i] < 0 else None,
                         (x.shape[i] + p[2 * i + 1]) if p[2 * i + 1] < 0 else None) for i in range(x.ndim))
        x = x[sl]
        p = [max(v, 0) for v in p]
    return np.pad(x, [(p[2 * i], p[2 * i + 1]) for i in range(x.ndim)], constant_values=a["value"])


register("pad", _pad_infer, _pad_ref, attrs={"pads": Attr("ints"), "value": Attr("float", 0.0)},
         category="shape", doc="constant padding, pads = (before0, after0, before1, after1, ...)")


def _check_index(t, op):
    if t.dtype not in (dtypes.i64, dtypes.i32):
        raise errors.DTypeError(f"{op}: indices must be i64 or i32, got {t.dtype}")


def _embedding_infer(ts, a):
    w, idx = ts
    _check_index(idx, "embedding")
    if w.rank != 2:
        raise errors.ShapeError(f"embedding: weight must be 2-D, got rank {w.rank}")
    return [TensorType(w.dtype, tuple(idx.shape) + (w.shape[1],))]


register("embedding", _embedding_infer, lambda xs, a: xs[0][xs[1]],
         arity=(2, 2), category="shape", doc="embedding(weight[V, D], ids) -> weight[ids]")


def _index_select_infer(ts, a):
    x, idx = ts
    _check_index(idx, "index_select")
    if idx.rank != 1:
        raise errors.ShapeError("index_select: indices must be 1-D")
    ax = norm_axis(a["axis"], x.rank, "index_select")
    shape = list(x.shape)
    shape[ax] = idx.shape[0]
    return [TensorType(x.dtype, tuple(shape))]


register("index_select", _index_select_infer, lambda xs, a: np.take(xs[0], xs[1], axis=a["axis"]),
         attrs={"axis": Attr("int")}, arity=(2, 2), category="shape")


def _gather_infer(ts, a):
    x, idx = ts
    _check_index(idx, "gather")
    norm_axis(a["axis"], x.rank, "gather")
    if idx.rank != x.rank:
        raise errors.ShapeError("gather: index rank must equal input rank")
    return [TensorType(x.dtype, idx.shape)]


register("gather", _gather_infer, lambda xs, a: np.take_along_axis(xs[0], xs[1], axis=a["axis"]),
         attrs={"axis": Attr("int")}, arity=(2, 2), category="shape",
         doc="torch.gather / ONNX GatherElements")


# -- creation ops (no tensor inputs; shapes may be symbolic)

def _arange_infer(ts, a):
    step = a["step"]
    if step == 0:
        raise errors.ShapeError("arange: step must not be 0")
    # ceil((end - start) / step), for either sign of step; an empty range has length 0
    n = floordiv(a["end"] - a["start"] + step - (1 if step > 0 else -1), step)
    if isinstance(n, int):
        n = max(n, 0)
    return [TensorType(a["dtype"], (n,))]


register("arange", _arange_infer,
         lambda xs, a: np.arange(a["start"], a["end"], a["step"]).astype(a["dtype"].np),
         attrs={"start": Attr("dim", 0), "end": Attr("dim"), "step": Attr("int", 1),
                "dtype": Attr("dtype", dtypes.i64)}, arity=(0, 0), category="creation")
register("full", lambda ts, a: [TensorType(a["dtype"], a["shape"])],
         lambda xs, a: np.full(a["shape"], a["value"], dtype=a["dtype"].np),
         attrs={"shape": Attr("dims"), "value": Attr("float"), "dtype": Attr("dtype", dtypes.f32)},
         arity=(0, 0), category="creation")
