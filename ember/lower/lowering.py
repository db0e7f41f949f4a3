"""Graph -> loop-IR Program.

Every graph value becomes a ``Ref``: a way to load its element at an index. A ``View`` is a
strided window on a buffer (reshape, permute, expand and slice only change its strides); a
``Lazy`` is a function from index to expression, not yet stored anywhere (pointwise ops).
Composing Lazy functions is fusion: a chain of pointwise ops ends up inlined into the one
kernel that finally stores it. A Lazy value is stored (materialized) when it has more than
one user (so it is not recomputed), when a template needs a buffer, or when it is an output.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import EmberError
from ..ir import Graph, dtypes
from ..ir.symbolic import Dim, evaluate, prod
from . import loop_ir as L
from .loop_ir import Buffer, Expr, Program


def contiguous_strides(shape) -> tuple:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc = acc * d
    return tuple(reversed(strides))


class Ref:
    shape: tuple
    dtype: dtypes.DType

    def load(self, index: list[Expr]) -> Expr:
        raise NotImplementedError


class View(Ref):
    def __init__(self, buf: Buffer, shape, strides=None, offset: Dim = 0):
        self.buf, self.shape, self.dtype = buf, tuple(shape), buf.dtype
        self.strides = tuple(strides) if strides is not None else contiguous_strides(shape)
        self.offset = offset

    @property
    def is_contiguous(self) -> bool:
        return self.offset == 0 and all(
            s == c or d == 1 for s, c, d in zip(self.strides, contiguous_strides(self.shape), self.shape))

    def flat_index(self, index) -> Expr:
        e = L.idx(self.offset)
        for i, s, d in zip(index, self.strides, self.shape):
            if d != 1:  # size-1 dims contribute nothing (and may carry any stride)
                e = e + i * L.idx(s)
        return e

    def load(self, index):
        return L.load(self.buf, self.flat_index(index))


class Lazy(Ref):
    def __init__(self, shape, dtype, fn: Callable[[list[Expr]], Expr]):
        self.shape, self.dtype, self.fn = tuple(shape), dtype, fn
        self.origins: list[str] = []   # the graph nodes composed into fn (set by Lowerer.run)

    def load(self, index):
        return self.fn(list(index))


def out_vars(rank: int, prefix: str = "i") -> list[Expr]:
    return [L.var(f"{prefix}{k}") for k in range(rank)]


class Lowerer:
    def __init__(self, graph: Graph, hints: dict | None = None):
        self.g = graph
        self.hints = dict(hints or {})   # symbol -> its size in the example inputs
        self.prog = Program(symbols=graph.symbols)
        self.refs: dict[int, Ref] = {}
        self.users: dict[int, int] = {}
        self.out_slot: dict[int, int] = {}   # value id -> output index it should be stored into
        self._count = 0

    def hint(self, d) -> int | None:
        """A size to choose a kernel form by (Winograd or not, pixels or channels as rows): an
        int dim itself, a symbolic one at the example inputs' sizes, None when no example fixed
        it. Every form is correct at every size; only which one is fastest follows the hint."""
        if isinstance(d, int):
            return d
        try:
            return int(evaluate(d, self.hints))
        except KeyError:
            return None

    # -- buffers
    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def temp(self, dtype, shape, value=None) -> Buffer:
        """A buffer for ``value``: its graph-output buffer when it is an output, else a temp."""
        if value is not None and id(value) in self.out_slot:
            return self.prog.outputs[self.out_slot.pop(id(value))]
        b = Buffer(self._name("t"), dtype, prod(shape), "temp", len(self.prog.temps))
        self.prog.temps.append(b)
        return b

    def const(self, data: np.ndarray, dtype=None, name: str = "c") -> View:
        dtype = dtype or dtypes.from_numpy(data.dtype)
        data = np.require(data.astype(dtype.np, copy=False), requirements="C")
        b = Buffer(name, dtype, int(data.size), "const", len(self.prog.consts))
        self.prog.consts.append(b)
        self.prog.const_data.append(data)
        return View(b, data.shape)

    def const_array(self, ref: Ref) -> np.ndarray | None:
        """The numpy value of a View of a constant buffer (for compile-time layout changes)."""
        if not isinstance(ref, View) or ref.buf.kind != "const":
            return None
        data = self.prog.const_data[ref.buf.index].reshape(-1)
        if not all(isinstance(x, int) for x in (ref.offset, *ref.strides, *ref.shape)):
            return None
        it = data.itemsize
        return np.lib.stride_tricks.as_strided(
            data[ref.offset:], shape=ref.shape, strides=[s * it for s in ref.strides]).copy()

    # -- storing
    def store(self, ref: Ref, value=None, buf: Buffer | None = None) -> View:
        """Emit a kernel that writes ``ref`` contiguously; returns a View of the result."""
        buf = buf or self.temp(ref.dtype, ref.shape, value)
        body = ref.load(out_vars(len(ref.shape)))
        k = L.Loop(self._name("k"), buf, ref.shape, body)
        self.prog.kernels.append(k)
        if getattr(ref, "origins", None):
            self.prog.origins[k.name] = list(ref.origins)
        return View(buf, ref.shape)

    def as_view(self, ref: Ref) -> View:
        return ref if isinstance(ref, View) else self.store(ref)

    def reduce(self, dtype, out_shape, sizes, body: Expr, op: str, post=None, value=None) -> View:
        buf = self.temp(dtype, out_shape, value)
        self.prog.kernels.append(L.Loop(self._name("k"), buf, tuple(out_shape), body,
                                        L.Reduce(op, tuple(sizes), post)))
        return View(buf, out_shape)

    # -- driver
    def run(self) -> Program:
        from .rules import RULES
        g, p = self.g, self.prog
        for o in g.outputs:
            self.users[id(o)] = self.users.get(id(o), 0) + 1
        for n in g.nodes:
            for i in n.inputs:
                self.users[id(i)] = self.users.get(id(i), 0) + 1
        for k, o in enumerate(g.outputs):
            p.outputs.append(Buffer(f"out{k}", o.dtype, prod(o.shape), "output", k))
            p.output_shapes.append(tuple(o.shape))
            if o.kind == "node":
                self.out_slot.setdefault(id(o), k)
        for k, v in enumerate(g.inputs):
            b = Buffer(v.name, v.dtype, prod(v.shape), "input", k)
            p.inputs.append(b)
            self.refs[id(v)] = View(b, v.shape)
        for c in g.constants:
            if self.users.get(id(c)):
                self.refs[id(c)] = self.const(c.data, c.dtype, c.name)
        for n in g.nodes:
            rule = RULES.get(n.op)
            if rule is None:
                raise EmberError(f"no lowering for op {n.op!r} (node {n.name}); "
                                 f"the CPU backend cannot compile it yet")
            first = len(p.kernels)
            ins = [self.refs[id(i)] for i in n.inputs]
            outs = rule(self, n, ins)
            outs = outs if isinstance(outs, list) else [outs]
            # a kernel's origins (profile labels): the nodes lowered into it; a pointwise chain
            # carries its nodes until the kernel that stores it
            label = f"{n.op} %{n.outputs[0].name}" if n.outputs else n.op
            chain = list(dict.fromkeys(o for r in ins if isinstance(r, Lazy) for o in r.origins))
            # a node that wrote a GEMM or template kernel is done there: what it returns lazily
            # (a view of that kernel's output) does not name it again downstream
            own = any(isinstance(k, (L.Matmul, L.Template)) and k.name not in p.origins
                      for k in p.kernels[first:])
            for r in outs:
                if isinstance(r, Lazy) and label not in r.origins:
                    r.origins = chain if own else chain + [label]
            for v, r in zip(n.outputs, outs):
                if isinstance(r, Lazy) and self.users.get(id(v), 0) > 1:
                    r = self.store(r, v)
                self.refs[id(v)] = r
            for k in p.kernels[first:]:
                p.origins.setdefault(k.name, [label])
        for k, o in enumerate(g.outputs):
            r, buf = self.refs[id(o)], p.outputs[k]
            if not (isinstance(r, View) and r.buf is buf):
                self.store(r, buf=buf)
                p.origins.setdefault(p.kernels[-1].name, [f"output {k}"])
        return p


def lower(graph: Graph, hints: dict | None = None) -> Program:
    """Lower a verified graph into a loop-IR Program (one kernel list, one set of buffers).
    ``hints``: symbol -> a typical size (the example inputs'), for choices between kernel forms."""
    try:
        return Lowerer(graph, hints).run()
    finally:
        L.clear_intern_table()
