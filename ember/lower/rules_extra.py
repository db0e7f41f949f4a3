"""Lowerings for the ops in ember/ir/ops/extra.py, registered into ``rules.RULES``."""
from __future__ import annotations

import numpy as np

from ..ir import dtypes
from . import loop_ir as L
from .lowering import Lazy, out_vars
from .rules import bcast, rule

I64 = dtypes.i64


def _bit(x: L.Expr, k: L.Expr, pow2) -> L.Expr:
    """Bit k (0..63, an index expression) of the i64 ``x``, as 0 or 1: floor(x / 2^k) mod 2
    for the low 63 bits (floor division reads two's complement right for negatives too),
    the sign for bit 63."""
    low = L.binary("mod", L.binary("floordiv", x, pow2.load([L.binary("min", k, 62)])), 2)
    return L.where(L.binary("ge", k, 63), L.cast(L.binary("lt", x, 0), I64), low)


@rule("bitwise")
def _bitwise(lw, n, r):
    """The loop IR has no bit operators, so a bitwise op is a sum over the output's bits:
    out = sum_j f(bits of the inputs)_j * 2^j, computed in i64 (every narrower integer
    type widens into it exactly; u64 keeps its bit pattern)."""
    op, out = n.attrs["op"], n.outputs[0]
    dt = out.dtype
    width = dt.itemsize * 8
    xs = [bcast(ref, out.shape) for ref in r]
    if op == "not":
        # ~x = -1 - x in two's complement; unsigned narrower types wrap at 2^width - 1
        top = -1 if dt.is_signed or width == 64 else (1 << width) - 1
        return Lazy(out.shape, dt, lambda ix: L.cast(L.idx(top) - L.cast(xs[0](ix), I64), dt))
    pow2 = lw.const(np.array([1 << k for k in range(63)] + [1], np.int64), I64)
    # weight of output bit j; the top bit of a signed (or 64-bit) type counts negatively
    top_w = -(1 << (width - 1)) if dt.is_signed or width == 64 else 1 << (width - 1)
    weights = lw.const(np.array([1 << k for k in range(width - 1)] + [top_w], np.int64), I64)
    ix, j = out_vars(len(out.shape)), L.var("r0")
    x = L.cast(xs[0](ix), I64)
    y = L.cast(xs[1](ix), I64)
    if op in ("and", "or", "xor"):
        a, b = _bit(x, j, pow2), _bit(y, j, pow2)
        bit = {"and": a * b, "or": L.binary("max", a, b), "xor": L.binary("mod", a + b, 2)}[op]
    else:
        # a count outside [0, width) shifts everything out: treat it as width
        s = L.where(L.binary("or", L.binary("lt", y, 0), L.binary("ge", y, width)), L.idx(width), y)
        src = j - s if op == "shl" else j + s
        if op == "shl":
            bit = L.where(L.binary("ge", src, 0), _bit(x, L.binary("max", src, 0), pow2), L.idx(0))
        elif dt.is_signed:  # arithmetic: bits above the type repeat its sign bit
            bit = _bit(x, L.binary("min", src, width - 1), pow2)
        else:
            bit = L.where(L.binary("lt", src, width), _bit(x, L.binary("min", src, 63), pow2), L.idx(0))
    body = bit * weights.load([j])
    return lw.reduce(dt, out.shape, (width,), body, "sum", L.cast(L.var("acc", I64), dt), out)
