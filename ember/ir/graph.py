"""The graph IR: SSA values produced by nodes, in topological order.

A ``Graph`` owns ``inputs`` (runtime arguments), ``constants`` (weights, with their data),
``nodes`` (in execution order) and ``outputs``. A ``Value`` is produced by exactly one
node, or is an input or a constant. Ops and their meaning live in the registry
(``ember.ir.ops``); the graph only stores names and attributes.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from . import dtypes
from .dtypes import DType
from .symbolic import Dim, free_symbols


@dataclass(frozen=True)
class TensorType:
    dtype: DType
    shape: tuple[Dim, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def symbols(self) -> set[str]:
        out = set()
        for d in self.shape:
            out |= free_symbols(d)
        return out


class Value:
    """An SSA value. ``kind`` is "input", "const" or "node"."""
    __slots__ = ("name", "type", "kind", "producer", "data")

    def __init__(self, name: str, type: TensorType, kind: str = "node",
                 producer: "Node | None" = None, data: np.ndarray | None = None):
        self.name, self.type, self.kind, self.producer, self.data = name, type, kind, producer, data

    @property
    def dtype(self) -> DType:
        return self.type.dtype

    @property
    def shape(self) -> tuple[Dim, ...]:
        return self.type.shape

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    __slots__ = ("op", "inputs", "attrs", "outputs", "name", "source")

    def __init__(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any],
                 outputs: Sequence[Value], name: str = "", source: str | None = None):
        self.op, self.inputs, self.attrs = op, list(inputs), dict(attrs)
        self.outputs, self.name, self.source = list(outputs), name, source

    def __repr__(self) -> str:
        outs = ", ".join(f"%{o.name}" for o in self.outputs)
        ins = ", ".join(f"%{i.name}" for i in self.inputs)
        return f"{outs} = {self.op}({ins})"


class Graph:
    """A model as a dataflow graph. Build with ``add_input``, ``add_const`` and ``op``.

    >>> g = Graph("main"); x = g.add_input("x", TensorType(dtypes.f32, (3,)))
    >>> g.outputs = [g.op("relu", [x])]
    """

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.constants: list[Value] = []
        self.nodes: list[Node] = []
        self.outputs: list[Value] = []
        self.output_names: list[str] | None = None  # user-facing output names when known
        self.sym_ranges: dict[str, tuple[int, int]] = {}  # symbol -> (min, max) allowed at run time
        self.meta: dict = {}  # frontend facts that are not IR (e.g. how to re-nest outputs)
        self._names: set[str] = set()
        self._counter = itertools.count()

    # -- naming
    def fresh_name(self, hint: str = "") -> str:
        if hint and hint not in self._names and hint.isidentifier():
            self._names.add(hint)
            return hint
        while True:
            n = f"{hint}{next(self._counter)}" if hint and hint.isidentifier() else str(next(self._counter))
            if n not in self._names:
                self._names.add(n)
                return n

    def reserve_name(self, name: str) -> None:
        self._names.add(name)

    # -- building
    def add_input(self, name: str, type: TensorType) -> Value:
        v = Value(self.fresh_name(name), type, "input")
        self.inputs.append(v)
        return v

    def add_const(self, data, name: str = "c", dtype: DType | None = None) -> Value:
        arr = np.asarray(data)
        dt = dtype or dtypes.from_numpy(arr.dtype)
        arr = np.require(arr.astype(dt.np, copy=False), requirements="C")  # keeps 0-d shape
        v = Value(self.fresh_name(name), TensorType(dt, tuple(arr.shape)), "const", data=arr)
        self.constants.append(v)
        return v

    def op(self, op: str, inputs: Sequence[Value], attrs: dict | None = None, *,
           name: str = "", source: str | None = None, num_outputs: int | None = None):
        """Append a node; its output types come from the op's inference rule.

        Returns the single output Value, or a list when the op has several outputs.
        """
        from .ops import get
        opdef = get(op)
        attrs = opdef.check_attrs(attrs or {})
        types = opdef.infer([v.type for v in inputs], attrs)
        node = Node(op, inputs, attrs, [], name=name or self.fresh_name(op), source=source)
        for t in types:
            node.outputs.append(Value(self.fresh_name(), t, "node", producer=node))
        self.nodes.append(node)
        return node.outputs[0] if len(node.outputs) == 1 else node.outputs

    # -- queries
    def values(self) -> Iterable[Value]:
        yield from self.inputs
        yield from self.constants
        for n in self.nodes:
            yield from n.outputs

    def users(self) -> dict[Value, list[Node]]:
        out: dict[Value, list[Node]] = {v: [] for v in self.values()}
        for n in self.nodes:
            for i in n.inputs:
                out.setdefault(i, []).append(n)
        return out

    @property
    def symbols(self) -> list[str]:
        """Symbolic dims of the inputs, in first-seen order."""
        seen: list[str] = []
        for v in self.inputs:
            for d in v.shape:
                for s in sorted(free_symbols(d)):
                    if s not in seen:
                        seen.append(s)
        return seen

    def replace_uses(self, old: Value, new: Value) -> None:
        for n in self.nodes:
            n.inputs = [new if i is old else i for i in n.inputs]
        self.outputs = [new if o is old else o for o in self.outputs]

    def __str__(self) -> str:
        from .printer import print_graph
        return print_graph(self)

    def clone(self) -> "Graph":
        """A structurally independent copy (constant data is shared, it is never mutated)."""
        g = Graph(self.name)
        g.output_names = list(self.output_names) if self.output_names is not None else None
        g.sym_ranges, g.meta = dict(self.sym_ranges), dict(self.meta)
        g._names = set(self._names)
        g._counter = itertools.count(next(self._counter) + 1)
        new: dict[int, Value] = {}
        for v in self.inputs:
            new[id(v)] = Value(v.name, v.type, "input")
            g.inputs.append(new[id(v)])
        for c in self.constants:
            new[id(c)] = Value(c.name, c.type, "const", data=c.data)
            g.constants.append(new[id(c)])
        for n in self.nodes:
            m = Node(n.op, [new[id(i)] for i in n.inputs], n.attrs, [], name=n.name, source=n.source)
            for o in n.outputs:
                new[id(o)] = Value(o.name, o.type, "node", producer=m)
                m.outputs.append(new[id(o)])
            g.nodes.append(m)
        g.outputs = [new[id(o)] for o in self.outputs]
        return g

    def stats(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts
