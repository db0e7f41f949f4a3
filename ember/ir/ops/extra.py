"""Ops added for frontends beyond the core set (ONNX and friends); same rules as the rest:
attributes, inference and a numpy reference per op."""
from __future__ import annotations

import numpy as np

from ... import errors
from .. import dtypes
from ..graph import TensorType
from .registry import Attr, broadcast_shapes, register, same_dtype

# -- bitwise: integer ops on two's-complement bit patterns

BITWISE = ("and", "or", "xor", "not", "shl", "shr")


def _bitwise_infer(ts, a):
    op = a["op"]
    if op not in BITWISE:
        raise errors.IRError(f"bitwise: op must be one of {', '.join(BITWISE)}, got {op!r}")
    if (len(ts) == 1) != (op == "not"):
        raise errors.IRError(f"bitwise {op!r} takes {1 if op == 'not' else 2} inputs, got {len(ts)}")
    dt = same_dtype("bitwise", ts)
    if dt.is_float or dt is dtypes.bool_:
        raise errors.DTypeError(f"bitwise {op!r} needs integer inputs, got {dt}")
    return [TensorType(dt, broadcast_shapes(*(t.shape for t in ts)))]


def _shift_ref(x, s, left):
    """Shift by s; a count that is negative or >= the width leaves only the sign fill
    (-1 for a right shift of a negative signed value, else 0), as ONNX BitShift says."""
    width = x.dtype.itemsize * 8
    s = s.astype(np.int64)
    out_of_range = (s < 0) | (s >= width)
    sc = np.where(out_of_range, 0, s).astype(x.dtype)
    with np.errstate(all="ignore"):
        y = np.left_shift(x, sc) if left else np.right_shift(x, sc)
    fill = np.zeros_like(y)
    if not left and x.dtype.kind == "i":
        fill = np.where(x < 0, x.dtype.type(-1), x.dtype.type(0))
    return np.where(out_of_range, fill, y).astype(x.dtype)


def _bitwise_ref(xs, a):
    op, x = a["op"], xs[0]
    if op == "not":
        return np.invert(x)
    y = xs[1]
    if op in ("shl", "shr"):
        x, y = np.broadcast_arrays(x, y)
        return _shift_ref(x, y, op == "shl")
    return {"and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor}[op](x, y).astype(x.dtype)


register("bitwise", _bitwise_infer, _bitwise_ref, attrs={"op": Attr("str")}, arity=(1, 2),
         category="elementwise",
         doc='bitwise(x[, y]) {op="and"|"or"|"xor"|"not"|"shl"|"shr"}; shr is arithmetic on '
             'signed types; shift counts < 0 or >= the bit width give the sign fill')


# -- bitcast: the same bits read as another dtype of the same width

def _bitcast_infer(ts, a):
    src, dst = ts[0].dtype, a["dtype"]
    if src.itemsize != dst.itemsize:
        raise errors.DTypeError(f"bitcast: {src} and {dst} differ in width "
                                f"({src.itemsize * 8} vs {dst.itemsize * 8} bits)")
    if src.is_float and dst.is_float and src is not dst:
        raise errors.DTypeError(f"bitcast between two float types ({src} -> {dst}) is not supported")
    return [TensorType(dst, ts[0].shape)]


register("bitcast", _bitcast_infer, lambda xs, a: np.ascontiguousarray(xs[0]).view(a["dtype"].np),
         attrs={"dtype": Attr("dtype")}, category="elementwise",
         doc="reinterpret each element's bits as dtype (same width); NaN comes out as the "
             "quiet NaN and, under fast math, -0.0 may lose its sign")
