"""The verifier: SSA, topological order, no dangling values, types agree with inference."""
from __future__ import annotations

from ..errors import EmberError, IRError
from .ops import get


def _where(n) -> str:
    return f"node {n.name} ({n.op})" + (f" from {n.source}" if n.source else "")


def verify(g) -> None:
    """Raise IRError naming the first node that breaks a rule; return None if the graph is sound."""
    defined: set[int] = set()
    names: set[str] = set()

    def define(v, what):
        if id(v) in defined:
            raise IRError(f"{what}: value %{v.name} is defined twice (not SSA)")
        if v.name in names:
            raise IRError(f"{what}: name %{v.name} is used by two values")
        defined.add(id(v))
        names.add(v.name)

    for v in g.inputs:
        if v.kind != "input":
            raise IRError(f"graph input %{v.name} has kind {v.kind!r}")
        define(v, "graph inputs")
    for v in g.constants:
        if v.kind != "const":
            raise IRError(f"constant %{v.name} has kind {v.kind!r}")
        if v.data is not None and tuple(v.data.shape) != tuple(v.shape):
            raise IRError(f"constant %{v.name}: data shape {v.data.shape} != type {v.type}")
        define(v, "constants")
    for n in g.nodes:
        try:
            opdef = get(n.op)
        except IRError as e:
            raise IRError(f"{_where(n)}: {e}") from None
        for i in n.inputs:
            if id(i) not in defined:
                raise IRError(f"{_where(n)}: input %{i.name} is not defined before use "
                              f"(dangling value or nodes out of topological order)")
        opdef.check_arity(len(n.inputs), f"{_where(n)}: ")
        try:
            attrs = opdef.check_attrs(n.attrs)
            types = opdef.infer([i.type for i in n.inputs], attrs)
        except EmberError as e:
            raise IRError(f"{_where(n)}: {e}") from None
        if len(types) != len(n.outputs):
            raise IRError(f"{_where(n)}: op yields {len(types)} results, node has {len(n.outputs)}")
        for o, t in zip(n.outputs, types):
            if o.producer is not n:
                raise IRError(f"{_where(n)}: result %{o.name} does not point back at its node")
            if o.type != t:
                raise IRError(f"{_where(n)}: result %{o.name} is typed {o.type} "
                              f"but the op infers {t}")
            define(o, _where(n))
    for v in g.outputs:
        if id(v) not in defined:
            raise IRError(f"graph output %{v.name} is not defined in the graph")
