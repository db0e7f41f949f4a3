"""Lowerings for the ops in ember/ir/ops/extra.py, registered into ``rules.RULES``."""
from __future__ import annotations

import math

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


# -- bitcast, by arithmetic on the IEEE fields (the loop IR has no reinterpreting load)

F64 = dtypes.f64
_MANTISSA = {"f16": 10, "bf16": 7, "f32": 23, "f64": 52}


def _p2(e) -> L.Expr:
    """2^e as f64 (exact for integer e)."""
    return L.binary("pow", L.const(2.0, F64), e if isinstance(e, L.Expr) else L.const(float(e), F64))


def _float_to_bits(x: L.Expr, width: int, mb: int) -> L.Expr:
    """The bit pattern of float ``x`` (as f64) as a signed i64 of ``width`` bits.

    -0.0 comes out as +0.0's bits: no arithmetic test tells the zeros apart once the C
    compiler may ignore signed zeros (-ffast-math), and NaNs all become the quiet NaN."""
    bias = (1 << (width - mb - 2)) - 1
    top = ((1 << (width - 1 - mb)) - 1) << mb           # the all-ones exponent field
    a = L.unary("abs", x)
    e = L.unary("floor", L.unary("log", a) / L.const(math.log(2), F64))
    e = L.where(L.binary("gt", _p2(e), a), e - 1.0, e)   # log's rounding, either way
    e = L.where(L.binary("le", _p2(e + 1.0), a), e + 1.0, e)
    normal = L.binary("ge", a, _p2(1 - bias))
    e = L.where(normal, e, L.const(float(1 - bias), F64))   # subnormals: the minimum exponent
    mant = (a / _p2(e) - L.where(normal, L.const(1.0, F64), L.const(0.0, F64))) * float(1 << mb)
    field = L.where(normal, L.cast(e, I64) + bias, L.idx(0))
    bits = field * L.idx(1 << mb) + L.cast(mant, I64)
    bits = L.where(L.binary("eq", a, L.const(math.inf, F64)), L.idx(top), bits)
    bits = L.where(L.binary("ne", x, x), L.idx(top | (1 << (mb - 1))), bits)   # the quiet NaN
    half = 1 << (width - 2)   # the sign bit's weight, -2^(width-1), in two steps (no overflow)
    return L.where(L.binary("lt", x, 0.0), bits - L.idx(half) - L.idx(half), bits)


def _bits_to_float(v: L.Expr, width: int, mb: int) -> L.Expr:
    """The f64 value of the float whose bits are the signed i64 ``v`` (width bits)."""
    bias = (1 << (width - mb - 2)) - 1
    emax = (1 << (width - 1 - mb)) - 1
    neg = L.binary("lt", v, 0)
    half = 1 << (width - 2)
    rest = L.where(neg, v + L.idx(half) + L.idx(half), v)   # the bits below the sign
    E, M = rest // L.idx(1 << mb), rest % L.idx(1 << mb)
    Mf, Ef = L.cast(M, F64), L.cast(E, F64)
    val = L.where(L.binary("eq", E, 0), Mf * _p2(1 - bias - mb),
                  (Mf * _p2(-mb) + 1.0) * _p2(Ef - float(bias)))
    special = L.where(L.binary("eq", M, 0), L.const(math.inf, F64), L.const(math.nan, F64))
    val = L.where(L.binary("eq", E, emax), special, val)
    return L.where(neg, L.unary("neg", val), val)


@rule("bitcast")
def _bitcast(lw, n, r):
    x, out = r[0], n.outputs[0]
    src, dst = x.dtype, out.dtype
    width = src.itemsize * 8
    if not src.is_float and not dst.is_float:
        # integers of one width: C's conversion is the two's-complement wrap-around
        return Lazy(out.shape, dst, lambda ix: L.cast(x.load(ix), dst))

    def as_signed(v):  # an integer's bits as the signed i64 of its width
        v = L.cast(v, I64)
        if not src.is_signed and width < 64:
            v = L.where(L.binary("ge", v, 1 << (width - 1)), v - L.idx(1 << width), v)
        return v
    if src.is_float:
        mb = _MANTISSA[src.name]
        return Lazy(out.shape, dst, lambda ix: L.cast(_float_to_bits(L.cast(x.load(ix), F64), width, mb), dst))
    mb = _MANTISSA[dst.name]
    return Lazy(out.shape, dst, lambda ix: L.cast(_bits_to_float(as_signed(x.load(ix)), width, mb), dst))
