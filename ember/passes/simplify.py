"""Algebraic simplification and canonicalization, as rewrite rules (one line of intent each).

x+0, x-0, x*1, x/1 -> x;  x/c -> x*(1/c);  neg(neg x) -> x;  no-op cast/expand/slice/reshape
-> x;  arange(n) >= 0 and the like -> true, also when n is symbolic (HF builds its masks from
aranges of the sequence length);  x & true, x | false -> x (broadcast as an expand), true
being a constant or an expanded one;  an elementwise op of expanded
values and scalars -> the op on the small values, expanded after (a mask built as [b, 1, Sq,
Sk] from a [b, 1, 1, Sk] padding mask stays a broadcast, read with stride 0 along Sq);
reshape(reshape x) -> reshape x;  permute(permute x) -> one permute (or none);
matmul(x, W) with constant W -> linear(x, W^T); linear + bias -> linear with bias, so the
weight layout is chosen once and the bias rides in the GEMM epilogue.
"""
from __future__ import annotations

import numpy as np

from ..ir import dtypes
from ..ir.ops import get as op_def
from ..ir.ops.registry import broadcast_shapes
from .pattern import Const, Op, Pattern, Var, apply_rules, scalar

zero = scalar(lambda v: v == 0)
one = scalar(lambda v: v == 1)
true = scalar(lambda v: bool(v))
false = scalar(lambda v: not bool(v))


def _keeps_type(g, m):
    """x, when it already has the result's type (the constant did not broadcast or cast it)."""
    return m["x"] if m["x"].type == m.root.type else None


def _as_broadcast(g, m):
    """x broadcast to the result's shape (x & true): x itself, or an expand of it."""
    x, root = m["x"], m.root
    if x.dtype != root.dtype:
        return None
    return x if x.type == root.type else g.op("expand", [x], {"shape": root.shape})


_MOVES = ("reshape", "expand", "permute")   # ops that move values without changing them


def _least(v):
    """The smallest element of ``v`` when it is an arange (moved around) with a known start
    and a positive step, else None."""
    n = v.producer
    while n is not None and n.op in _MOVES:
        n = n.inputs[0].producer
    if n is None or n.op != "arange" or n.attrs["step"] < 1 or not isinstance(n.attrs["start"], int):
        return None
    return n.attrs["start"]


def _all_true(g, root):
    """A bool tensor of ``root``'s shape, all true: a constant, or an expanded one when the shape
    is symbolic."""
    shape = root.shape
    if all(isinstance(d, int) for d in shape):
        return g.add_const(np.ones(shape, bool), name="all_true", dtype=dtypes.bool_)
    one = g.add_const(np.ones((1,) * len(shape), bool), name="all_true", dtype=dtypes.bool_)
    return g.op("expand", [one], {"shape": shape})


def _arange_at_least(strict: bool):
    """x >= c (x > c when ``strict``) is true everywhere when x's smallest element passes."""
    def rewrite(g, m):
        lo, c = _least(m["x"]), m["c"]
        if lo is None or c.data.size == 0 or c.dtype.is_float and not np.all(np.isfinite(c.data)):
            return None
        top = c.data.max()
        return _all_true(g, m.root) if (lo > top if strict else lo >= top) else None
    return rewrite


def _expanded(v) -> bool:
    return v.producer is not None and v.producer.op == "expand"


class ElementwiseOfExpand(Pattern):
    """An elementwise node whose inputs are expands and size-1 constants, one expand at least."""

    def match(self, v, m):
        n = v.producer
        if n is None or len(n.outputs) != 1 or op_def(n.op).category != "elementwise":
            return False
        expanded = [_expanded(i) for i in n.inputs]
        scalars = [i.kind == "const" and i.data is not None and i.data.size == 1 for i in n.inputs]
        return any(expanded) and all(e or c for e, c in zip(expanded, scalars))


def _hoist_expand(g, m):
    n = m.root.producer
    inner = [i.producer.inputs[0] if _expanded(i) else i for i in n.inputs]
    small = g.op(n.op, inner, dict(n.attrs), source=n.source)
    if broadcast_shapes(*(i.shape for i in inner)) == m.root.shape:
        return small
    return g.op("expand", [small], {"shape": m.root.shape})


def _reciprocal(g, m):
    c = m["c"]
    if not c.dtype.is_float or np.any(c.data == 0):
        return None
    return g.op("mul", [m["x"], g.add_const((1 / c.data.astype(np.float64)).astype(c.dtype.np),
                                             name=f"{c.name}_inv", dtype=c.dtype)])


def _fuse_permutes(g, m):
    inner, outer = m.node("p").attrs["perm"], m.root.producer.attrs["perm"]
    perm = tuple(inner[k] for k in outer)
    if perm == tuple(range(len(perm))):
        return m["x"]
    return g.op("permute", [m["x"]], {"perm": perm})


def _identity_perm(g, m):
    perm = m.root.producer.attrs["perm"]
    return m["x"] if perm == tuple(range(len(perm))) else None


def _full_slice(g, m):
    a = m.root.producer.attrs
    return m["x"] if a["start"] == 0 and a["step"] == 1 and a["end"] == m["x"].shape[a["axis"]] else None


def _matmul_to_linear(g, m):
    w = m["w"]
    if w.type.rank != 2 or m["x"].type.rank < 2:
        return None
    wt = g.add_const(np.ascontiguousarray(w.data.T), name=f"{w.name}_t", dtype=w.dtype)
    return g.op("linear", [m["x"], wt])


def _linear_bias(g, m):
    n, b = m.node("y"), m["b"]
    if n.op != "linear" or len(n.inputs) != 2 or b.data.size != n.inputs[1].shape[0] \
            or b.type.rank > 1 and any(d != 1 for d in b.shape[:-1]):
        return None
    return g.op("linear", [n.inputs[0], n.inputs[1], g.add_const(b.data.reshape(-1), b.name, b.dtype)],
                source=n.source)


RULES = [
    ("add-zero", Op("add", Var("x"), Const("c", zero)), _keeps_type),
    ("sub-zero", Op("sub", Var("x"), Const("c", zero)), _keeps_type),
    ("mul-one", Op("mul", Var("x"), Const("c", one)), _keeps_type),
    ("div-one", Op("div", Var("x"), Const("c", one)), _keeps_type),
    ("div-const", Op("div", Var("x"), Const("c")), _reciprocal),
    ("and-true", Op("logical_and", Var("x"), Const("c", true)), _as_broadcast),
    ("or-false", Op("logical_or", Var("x"), Const("c", false)), _as_broadcast),
    ("and-expanded-true", Op("logical_and", Var("x"), Op("expand", Const("c", true))), _as_broadcast),
    ("or-expanded-false", Op("logical_or", Var("x"), Op("expand", Const("c", false))), _as_broadcast),
    ("arange-ge", Op("ge", Var("x"), Const("c")), _arange_at_least(False)),
    ("arange-gt", Op("gt", Var("x"), Const("c")), _arange_at_least(True)),
    ("le-arange", Op("le", Const("c"), Var("x")), _arange_at_least(False)),
    ("lt-arange", Op("lt", Const("c"), Var("x")), _arange_at_least(True)),
    ("elementwise-of-expand", ElementwiseOfExpand(), _hoist_expand),
    ("neg-neg", Op("neg", Op("neg", Var("x"))), lambda g, m: m["x"]),
    ("cast-noop", Op("cast", Var("x")), _keeps_type),
    ("expand-noop", Op("expand", Var("x")), _keeps_type),
    ("reshape-noop", Op("reshape", Var("x")), _keeps_type),
    ("reshape-reshape", Op("reshape", Op("reshape", Var("x"))),
     lambda g, m: g.op("reshape", [m["x"]], {"shape": m.root.shape})),
    ("permute-permute", Op("permute", Op("permute", Var("x"), name="p")), _fuse_permutes),
    ("permute-identity", Op("permute", Var("x")), _identity_perm),
    ("slice-full", Op("slice", Var("x")), _full_slice),
    ("matmul-to-linear", Op("matmul", Var("x"), Const("w")), _matmul_to_linear),
    ("linear-add-bias", Op("add", Op("linear", Var("x"), Var("w"), name="y"), Const("b")), _linear_bias),
]


def simplify(g, log=None):
    return apply_rules(g, RULES, log=log)
