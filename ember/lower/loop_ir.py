"""The loop IR: the backend-neutral language every graph op lowers into.

Three kernel forms, each writing one buffer:
  * ``Loop`` without ``reduce``: out[i0..in] = body            (pointwise)
  * ``Loop`` with ``reduce``:    out[i..] = post(reduce_r body) (reduction over r0..rk)
  * ``Matmul``:                  out[b, i, j] = epilogue(sum_k A[b,i,k] * B[b,k,j])

``body`` is an ``Expr``: a small expression tree over loop variables (``var``), symbolic
sizes (``dim``), buffer loads (``load``, whose index is itself an Expr, so gathers and
views are just index arithmetic), constants and math. Exprs are interned: building the same
expression twice gives the same object, so printers see shared subexpressions for free.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..ir import dtypes
from ..ir.dtypes import DType
from ..ir.symbolic import Dim, SymExpr

UNARY = ("neg", "abs", "exp", "log", "sqrt", "rsqrt", "reciprocal", "tanh", "erf", "sigmoid",
         "relu", "sin", "cos", "floor", "ceil", "sign", "not")
BINARY = ("add", "sub", "mul", "div", "pow", "max", "min", "mod", "floordiv")
COMPARE = ("eq", "ne", "lt", "le", "gt", "ge")
LOGICAL = ("and", "or", "xor")


@dataclass(frozen=True, eq=False)
class Buffer:
    """A flat array. kind: input | output | const | temp. Identity is the buffer."""
    name: str
    dtype: DType
    numel: Dim
    kind: str
    index: int  # position among buffers of its kind

    def __repr__(self):
        return f"{self.kind}:{self.name}"


class Expr:
    __slots__ = ("op", "args", "dtype", "arg", "__weakref__")
    _interned: dict = {}

    def __new__(cls, op: str, args: tuple = (), dtype: DType = dtypes.f32, arg: Any = None):
        # floats keyed by repr so that 0.0 and -0.0 stay distinct; buffers by identity
        k = id(arg) if isinstance(arg, Buffer) else (repr(arg) if isinstance(arg, float) else arg)
        key = (op, args, dtype, k)
        hit = cls._interned.get(key)
        if hit is not None:
            return hit
        self = object.__new__(cls)
        self.op, self.args, self.dtype, self.arg = op, args, dtype, arg
        cls._interned[key] = self
        return self

    def __repr__(self):
        if self.op in ("const", "var"):
            return str(self.arg)
        if self.op == "dim":
            return f"<{self.arg}>"
        if self.op == "load":
            return f"{self.arg.name}[{self.args[0]!r}]"
        return f"{self.op}({', '.join(map(repr, self.args))})"

    # arithmetic sugar for index math
    def __add__(self, o):
        return add(self, o)

    def __radd__(self, o):
        return add(o, self)

    def __sub__(self, o):
        return sub(self, o)

    def __mul__(self, o):
        return mul(self, o)

    def __rmul__(self, o):
        return mul(o, self)

    def __truediv__(self, o):
        return binary("div", self, o)

    def __rtruediv__(self, o):
        return binary("div", o, self)

    def __floordiv__(self, o):
        return binary("floordiv", self, o)

    def __mod__(self, o):
        return binary("mod", self, o)


def clear_intern_table() -> None:
    """Drop interned expressions (they pin buffers); called after each lowering."""
    Expr._interned.clear()


def const(v, dtype: DType = dtypes.f32) -> Expr:
    if dtype is dtypes.bool_:
        v = bool(v)
    elif dtype.is_float:
        v = float(v)
    else:
        v = int(v)
    return Expr("const", (), dtype, v)


def idx(v) -> Expr:
    """An index expression from an int, a symbolic Dim or an Expr."""
    if isinstance(v, Expr):
        return v
    if isinstance(v, SymExpr):
        return Expr("dim", (), dtypes.i64, v)
    return const(int(v), dtypes.i64)


def var(name: str, dtype: DType = dtypes.i64) -> Expr:
    """A loop variable (i0.., r0..) or, with a value dtype, the accumulator ``acc``."""
    return Expr("var", (), dtype, name)


def load(buf: Buffer, index) -> Expr:
    return Expr("load", (idx(index),), buf.dtype, buf)


def _is_const(e, v=None):
    return isinstance(e, Expr) and e.op == "const" and (v is None or e.arg == v)


def _dim_value(e: Expr):
    """The int or symbolic Dim an index constant stands for (None for other expressions)."""
    return e.arg if e.op in ("const", "dim") else None


def _lift(a, like: Expr | None):
    if isinstance(a, Expr):
        return a
    if isinstance(a, SymExpr) or like is None or not like.dtype.is_float:
        return idx(a)
    return const(a, like.dtype)


def binary(op: str, a, b) -> Expr:
    a = _lift(a, b if isinstance(b, Expr) else None)
    b = _lift(b, a)
    if a.dtype is not b.dtype:
        raise TypeError(f"loop IR {op}: dtypes differ ({a.dtype} vs {b.dtype})")
    if not a.dtype.is_float:  # fold integer index arithmetic so the printed C stays readable
        if _is_const(a) and _is_const(b) and op in ("add", "sub", "mul", "floordiv", "mod"):
            x, y = a.arg, b.arg
            return const({"add": x + y, "sub": x - y, "mul": x * y,
                          "floordiv": x // y if y else 0, "mod": x % y if y else 0}[op], a.dtype)
        if op == "add" and _is_const(a, 0) or op == "mul" and _is_const(a, 1):
            return b
        if op in ("add", "sub") and _is_const(b, 0) or op in ("mul", "floordiv") and _is_const(b, 1):
            return a
        if op == "mul" and (_is_const(a, 0) or _is_const(b, 0)):
            return const(0, a.dtype)
        if op == "mod" and _is_const(b, 1):
            return const(0, a.dtype)
        if op == "add":  # (x // n) * n + x % n -> x: a reshape's unravel/ravel round trip
            for p, q in ((a, b), (b, a)):
                if p.op == "mul" and q.op == "mod" and p.args[0].op == "floordiv" and \
                        p.args[0].args == q.args and p.args[1] is q.args[1]:
                    return q.args[0]
                # (x // n) * (n * s) + (x % n) * s -> x * s: the same round trip, scaled by a
                # row stride (a [B*S, N] GEMM output read back as [B, S, N])
                if p.op == "mul" and q.op == "mul" and p.args[0].op == "floordiv" and q.args[0].op == "mod" and \
                        p.args[0].args == q.args[0].args:
                    ps, n, qs = _dim_value(p.args[1]), _dim_value(q.args[0].args[1]), _dim_value(q.args[1])
                    if ps is not None and n is not None and qs is not None and ps == n * qs:
                        return binary("mul", q.args[0].args[0], q.args[1])
    dt = dtypes.bool_ if op in COMPARE else a.dtype
    return Expr(op, (a, b), dt)


def add(a, b):
    return binary("add", a, b)


def sub(a, b):
    return binary("sub", a, b)


def mul(a, b):
    return binary("mul", a, b)


def unary(op: str, a: Expr) -> Expr:
    return Expr(op, (a,), a.dtype)


def where(c: Expr, a, b) -> Expr:
    if isinstance(a, Expr) and not isinstance(b, Expr):
        b = _lift(b, a)
    elif isinstance(b, Expr) and not isinstance(a, Expr):
        a = _lift(a, b)
    if _is_const(c):
        return a if c.arg else b
    if a is b:
        return a
    return Expr("where", (c, a, b), a.dtype)


def cast(a: Expr, dtype: DType) -> Expr:
    if a.dtype is dtype:
        return a
    if _is_const(a) and not a.dtype.is_float and not dtype.is_float and dtype is not dtypes.bool_:
        return const(a.arg, dtype)
    return Expr("cast", (a,), dtype)


def masked_load(buf: Buffer, index, cond: Expr, other) -> Expr:
    """``buf[index] if cond else other`` that never reads out of bounds.

    The index is clamped to 0 when the condition fails, so printers may evaluate both sides
    eagerly (which lets the C compiler vectorize the select).
    """
    if _is_const(cond):
        return load(buf, index) if cond.arg else _lift(other, load(buf, 0))
    safe = load(buf, where(cond, idx(index), 0))
    return where(cond, safe, _lift(other, safe))


# -- kernels

@dataclass
class Reduce:
    op: str                 # sum | max | min | prod | argmax
    sizes: tuple            # extents of r0, r1, ...
    post: Expr | None = None  # expression of var("acc") and the output vars; None = acc


@dataclass
class Loop:
    name: str
    out: Buffer
    shape: tuple            # output iteration space; vars i0..; out is written contiguously
    body: Expr
    reduce: Reduce | None = None


@dataclass
class Operand:
    """A strided view of a buffer for a template: element = buf[offset + sum(i * stride)]."""
    buf: Buffer
    offset: Dim
    strides: tuple          # one per batch dim, then the two matrix dims
    packed: int = 0         # B only: >0 = a constant pre-packed in panels of this many
                            # columns (lower/packing.py); offset and strides are then unused


@dataclass
class Matmul:
    name: str
    out: Buffer             # contiguous [batch..., M, N]
    batch: tuple
    M: Dim
    N: Dim
    K: Dim
    a: Operand              # strides (batch..., m, k)
    b: Operand              # strides (batch..., k, n)
    epilogue: Expr | None = None  # of var("acc") and output vars i0.. (batch..., m, n)
    tile: dict | None = None  # blocking chosen per kernel ("kc", "mc", ...; backends/cpu/autotune.py);
                              # None = the backend's default constants


class Template:
    """A kernel that a backend prints by hand: a schedule the generic Loop / Matmul forms cannot
    express (fused tiled attention, the int8 GEMM, direct convolution...).

    Subclasses are dataclasses with ``name``, ``out`` and ``shape`` (the output's shape). They
    say which buffers they read (``inputs``) and which loop-IR expressions they carry
    (``exprs``, e.g. an epilogue, whose loads may name more buffers), so that scheduling and
    memory planning treat them like any other kernel. A backend registers one printer per
    subclass (backends/cpu/codegen.py: ``template``).
    """
    name: str
    out: Buffer
    shape: tuple

    def inputs(self) -> list:
        raise NotImplementedError

    def exprs(self) -> list:
        return []


@dataclass
class Program:
    """A whole graph as kernels over buffers: what a backend prints as one entry point."""
    symbols: list[str]
    inputs: list[Buffer] = field(default_factory=list)
    outputs: list[Buffer] = field(default_factory=list)
    consts: list[Buffer] = field(default_factory=list)
    const_data: list = field(default_factory=list)   # numpy arrays, parallel to consts
    temps: list[Buffer] = field(default_factory=list)
    kernels: list = field(default_factory=list)
    output_shapes: list[tuple] = field(default_factory=list)
    origins: dict = field(default_factory=dict)      # kernel name -> ["linear %3", ...]: the graph
                                                     # nodes it computes (a kernel profile's labels)


@dataclass
class Stage:
    """One reduction inside a RowKernel: ``var`` = post(reduce_r body) for the current row."""
    var: str
    reduce: Reduce
    body: Expr


@dataclass
class RowKernel:
    """Reductions over a row and the pointwise store that uses them, in one loop nest.

    out[rows..., cols...] = body, where body may read the stage variables; each stage runs
    over the row (vars r0..) before the store loop (vars i{rows}..). Softmax and layer norm
    become one kernel each: the row is read from cache, not from memory, after the first pass.
    """
    name: str
    out: Buffer
    shape: tuple       # rows + cols
    rows: int          # how many leading dims are rows
    stages: list
    body: Expr
