"""ONNX converters, continued from onnx_ops.py: Data-dependent writes and selections: the Scatter family, GatherND and TopK."""
from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from ..ir import dtypes
from ..ir.graph import Value
from .onnx import Unsupported
from .onnx_ops import _axis, _c, _permute, _rank, _reshape, _swish, _unsqueeze, _where, conv


# ---------------------------------------------------------------- scatter, gather-nd, top-k
#
# Data-dependent writes (scatter) and sorts (top-k) are composed from masks: an update
# lands at a position when its target index equals that position, so every scatter is a
# reduction over the updates of where(hit, update, identity). That costs O(updates x
# positions), fine for the index tensors these ops see (cache updates, small top-k), and
# it reproduces the reference's order exactly: with duplicates, the last update wins.

def _iota(cx, n, rank, ax, dt=dtypes.i64):
    """0..n-1 laid along axis ``ax`` of a rank-``rank`` tensor of ones elsewhere."""
    shape = [1] * rank
    shape[ax] = n
    return cx.const_array(np.arange(n, dtype=dt.np).reshape(shape), dt)


def _wrap_index(cx, idx, n):
    """Negative indices count from the end (n may differ per last-axis component)."""
    idx = cx.cast(idx, dtypes.i64)
    n = n if isinstance(n, Value) else cx.const(int(n), dtypes.i64)
    return _where(cx, cx.op("lt", [idx, cx.const(0, dtypes.i64)]), cx.op("add", [idx, n]), idx)


def _lowest(x):
    return -math.inf if x.dtype.is_float else int(np.iinfo(x.dtype.np).min)


def _highest(x):
    return math.inf if x.dtype.is_float else int(np.iinfo(x.dtype.np).max)


def _scatter_flat(cx, data, pos, upd, reduction):
    """data [P, R] with rows ``pos`` [M] (in range) updated from ``upd`` [M, R]."""
    P, M = data.shape[0], pos.shape[0]
    if not all(isinstance(d, int) for d in (P, M)):
        raise Unsupported("scatter over dynamic sizes")
    hit = cx.op("eq", [_reshape(cx, pos, (M, 1)), _iota(cx, P, 2, 1)])            # [M, P]
    # the last update aimed at each row (-1: none)
    last = cx.op("max", [_where(cx, hit, _iota(cx, M, 2, 0), cx.const(-1, dtypes.i64))],
                 {"axes": (0,), "keepdims": False})                                # [P]
    touched = _reshape(cx, cx.op("ge", [last, cx.const(0, dtypes.i64)]), (P, 1))
    if reduction == "none":
        src = cx.op("index_select", [upd, cx.op("maximum", [last, cx.const(0, dtypes.i64)])], {"axis": 0})
        return _where(cx, touched, src, data)
    ident = {"add": 0, "mul": 1, "max": _lowest(data), "min": _highest(data)}.get(reduction)
    if ident is None:
        raise Unsupported(f"scatter reduction {reduction!r}")
    hit3 = _reshape(cx, hit, (M, P, 1))
    u3 = _reshape(cx, upd, (M, 1, upd.shape[1]))
    kind = {"add": "sum", "mul": "prod", "max": "max", "min": "min"}[reduction]
    acc = cx.op(kind, [_where(cx, hit3, u3, _c(cx, ident, upd))], {"axes": (0,), "keepdims": False})
    combine = {"add": "add", "mul": "mul", "max": "maximum", "min": "minimum"}[reduction]
    return _where(cx, touched, cx.op(combine, [data, acc]), data)


def _flat_positions(cx, idx, dims):
    """Row-major flat offsets of the index vectors in ``idx``'s last axis within ``dims``."""
    k = len(dims)
    strides = [int(np.prod(dims[d + 1:], dtype=np.int64)) for d in range(k)]
    sizes = cx.const_array(np.array(dims, np.int64), dtypes.i64)
    idx = _wrap_index(cx, idx, sizes)
    return cx.op("sum", [cx.op("mul", [idx, cx.const_array(np.array(strides, np.int64), dtypes.i64)])],
                 {"axes": (-1,), "keepdims": False})


@conv("ScatterND")
def _scatter_nd(cx, ins, a):
    data, idx, upd = ins[0], ins[1], ins[2]
    if not (data.type.is_static and idx.type.is_static):
        raise Unsupported("ScatterND over dynamic shapes")
    k = idx.shape[-1]
    lead, rest = [int(d) for d in data.shape[:k]], [int(d) for d in data.shape[k:]]
    m = int(np.prod(idx.shape[:-1], dtype=np.int64))
    pos = _reshape(cx, _flat_positions(cx, idx, lead), (m,))
    r = int(np.prod(rest, dtype=np.int64))
    out = _scatter_flat(cx, _reshape(cx, data, (int(np.prod(lead, dtype=np.int64)), r)), pos,
                        _reshape(cx, upd, (m, r)), a.get("reduction", "none"))
    return _reshape(cx, out, data.shape)


@conv("ScatterElements", "Scatter")
def _scatter_elements(cx, ins, a):
    data, idx, upd = ins[0], ins[1], ins[2]
    if not (data.type.is_static and idx.type.is_static):
        raise Unsupported(f"{cx.node.op_type} over dynamic shapes")
    r = _rank(data)
    ax = _axis(a.get("axis", 0), r)
    # each update's full target coordinate: its own position, with the index along ``axis``
    coords = [_wrap_index(cx, idx, data.shape[ax]) if k == ax else
              cx.op("expand", [_iota(cx, idx.shape[k], r, k)], {"shape": tuple(idx.shape)})
              for k in range(r)]
    coords = [_unsqueeze(cx, c, [r]) for c in coords]
    stacked = coords[0] if r == 1 else cx.op("concat", coords, {"axis": r})
    m = int(np.prod(idx.shape, dtype=np.int64))
    pos = _reshape(cx, _flat_positions(cx, stacked, [int(d) for d in data.shape]), (m,))
    n = int(np.prod(data.shape, dtype=np.int64))
    out = _scatter_flat(cx, _reshape(cx, data, (n, 1)), pos, _reshape(cx, upd, (m, 1)),
                        a.get("reduction", "none"))
    return _reshape(cx, out, data.shape)


@conv("TensorScatter")
def _tensor_scatter(cx, ins, a):
    past, upd = ins[0], ins[1]
    if not (past.type.is_static and upd.type.is_static):
        raise Unsupported("TensorScatter over dynamic shapes")
    r = _rank(past)
    ax = _axis(a.get("axis", -2), r)
    if ax == 0:
        raise ShapeError("TensorScatter: axis 0 is the batch axis")
    L, S = int(past.shape[ax]), int(upd.shape[ax])
    start = cx.cast(ins[2], dtypes.i64) if cx.has(2) else cx.const_array(
        np.zeros(past.shape[0], np.int64), dtypes.i64)
    # cache position of each update row: write_indices[batch] + sequence index
    shape = [1] * r
    shape[0] = past.shape[0]
    tgt = cx.op("add", [_reshape(cx, start, shape), _iota(cx, S, r, ax)])
    if a.get("mode", "linear") == "circular":
        tgt = cx.op("mod", [tgt, cx.const(L, dtypes.i64)])
    full = list(upd.shape)
    tgt = cx.op("expand", [tgt], {"shape": tuple(full)})
    return _scatter_elements(cx, [past, tgt, upd], {"axis": ax})


@conv("GatherND")
def _gather_nd(cx, ins, a):
    data, idx = ins[0], ins[1]
    if not (data.type.is_static and idx.type.is_static):
        raise Unsupported("GatherND over dynamic shapes")
    b = a.get("batch_dims", 0)
    k = idx.shape[-1]
    dims = [int(d) for d in data.shape]
    batch, looked, rest = dims[:b], dims[b:b + k], dims[b + k:]
    nb, nl = int(np.prod(batch, dtype=np.int64)), int(np.prod(looked, dtype=np.int64))
    pos = _flat_positions(cx, idx, looked)                       # idx.shape[:-1]
    if b:  # each batch entry indexes its own block of rows
        off = _reshape(cx, cx.const_array(np.arange(nb, dtype=np.int64) * nl, dtypes.i64),
                       batch + [1] * (_rank(pos) - b))
        pos = cx.op("add", [pos, off])
    flat = _reshape(cx, data, (nb * nl,) + tuple(rest))
    m = int(np.prod(pos.shape, dtype=np.int64))
    y = cx.op("index_select", [flat, _reshape(cx, pos, (m,))], {"axis": 0})
    return _reshape(cx, y, tuple(idx.shape[:-1]) + tuple(rest))


@conv("TopK")
def _topk(cx, ins, a):
    x = ins[0]
    r = _rank(x)
    ax = _axis(a.get("axis", -1), r)
    k = int(cx.scalar(1)) if cx.opset >= 10 else int(a["k"])
    n = x.shape[ax]
    if not isinstance(n, int):
        raise Unsupported("TopK along a dynamic axis")
    if not 0 < k <= n:
        raise ShapeError(f"TopK: k={k} out of range for an axis of {n}")
    perm = [d for d in range(r) if d != ax] + [ax]
    xt = _permute(cx, x, perm)                                   # [..., n]
    xi, xj = _unsqueeze(cx, xt, [r]), _unsqueeze(cx, xt, [r - 1])  # [..., n, 1], [..., 1, n]
    # rank of element i = how many come before it: better values, then equal ones at a
    # lower index (the order ONNX prescribes, sorted or not)
    better = cx.op("gt" if a.get("largest", 1) else "lt", [xj, xi])
    earlier = cx.op("logical_and", [cx.op("eq", [xj, xi]),
                                    cx.op("lt", [_iota(cx, n, 2, 1), _iota(cx, n, 2, 0)])])
    rank = cx.op("sum", [cx.cast(cx.op("logical_or", [better, earlier]), dtypes.i64)],
                 {"axes": (r,), "keepdims": True})                   # [..., n, 1]
    pick = cx.op("eq", [rank, _iota(cx, k, 2, 1)])                   # [..., n, k]
    vals = cx.op("sum", [_where(cx, pick, xi, _c(cx, 0, x))], {"axes": (r - 1,), "keepdims": False})
    idxs = cx.op("sum", [_where(cx, pick, _iota(cx, n, 2, 0), cx.const(0, dtypes.i64))],
                 {"axes": (r - 1,), "keepdims": False})
    inv = [perm.index(d) for d in range(r)]
    return [_permute(cx, vals, inv), _permute(cx, idxs, inv)]


@conv("CumProd")
def _cumprod(cx, ins, a):
    x = ins[0]
    r = _rank(x)
    ax = _axis(int(cx.scalar(1)), r)
    n = x.shape[ax]
    if not isinstance(n, int):
        raise Unsupported("CumProd along a dynamic dim")
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")   # output i takes inputs j
    rev, exc = a.get("reverse", 0), a.get("exclusive", 0)
    m = ((j > i) if exc else (j >= i)) if rev else ((j < i) if exc else (j <= i))
    perm = [d for d in range(r) if d != ax] + [ax]
    xt = _unsqueeze(cx, _permute(cx, x, perm), [r - 1])             # [..., 1, n]
    y = cx.op("prod", [_where(cx, cx.const_array(m), xt, _c(cx, 1, x))], {"axes": (r,), "keepdims": False})
    return _permute(cx, y, [perm.index(d) for d in range(r)])


@conv("SwiGLU")
def _swiglu(cx, ins, a):
    g, v = ins[0], ins[1]
    if tuple(g.shape) != tuple(v.shape):
        raise ShapeError(f"SwiGLU: gate {list(g.shape)} and value {list(v.shape)} differ in shape")
    return cx.op("mul", [_swish(cx, [g], {"alpha": a.get("alpha", 1.0)}), v])
