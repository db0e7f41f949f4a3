"""The reference interpreter: runs any graph with numpy, op by op.

It is the meaning of every op; compiled code and passes are checked against it.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from .ops import get
from .symbolic import SymExpr, evaluate


def bind_symbols(g, arrays) -> dict[str, int]:
    """Map each symbolic input dim to its size in ``arrays``; check the rest agree."""
    env: dict[str, int] = {}
    for v, a in zip(g.inputs, arrays):
        if a.ndim != len(v.shape):
            raise InputError(f"input {v.name!r}: expected rank {len(v.shape)} "
                             f"({v.type}), got shape {tuple(a.shape)}")
        for d, n in zip(v.shape, a.shape):
            if isinstance(d, SymExpr) and len(d.free_symbols) == 1 and str(d) in d.free_symbols:
                if env.setdefault(str(d), n) != n:
                    raise InputError(f"input {v.name!r}: dim {d} is {n} here but "
                                     f"{env[str(d)]} in another input")
    for v, a in zip(g.inputs, arrays):
        want = tuple(evaluate(d, env) for d in v.shape)
        if want != tuple(a.shape):
            raise InputError(f"input {v.name!r}: expected shape {v.type} = {want}, got {tuple(a.shape)}")
    return env


def _concrete(v, env):
    if isinstance(v, SymExpr):
        return evaluate(v, env)
    if isinstance(v, tuple):
        return tuple(_concrete(x, env) for x in v)
    return v


def run_node(n, args, env):
    attrs = {k: _concrete(v, env) for k, v in n.attrs.items()}
    out = get(n.op).ref(args, attrs)
    outs = out if isinstance(out, (list, tuple)) else [out]
    return [np.asarray(o, dtype=v.dtype.np) for o, v in zip(outs, n.outputs)]


def interpret(g, inputs, trace=None) -> list[np.ndarray]:
    """Run ``g`` on numpy ``inputs`` (list in graph order, or dict by name)."""
    if isinstance(inputs, dict):
        inputs = [inputs[v.name] for v in g.inputs]
    arrays = [np.asarray(a) for a in inputs]
    if len(arrays) != len(g.inputs):
        raise InputError(f"graph takes {len(g.inputs)} inputs, got {len(arrays)}")
    env = bind_symbols(g, arrays)
    vals: dict[int, np.ndarray] = {}
    for v, a in zip(g.inputs, arrays):
        vals[id(v)] = a.astype(v.dtype.np, copy=False)
    for c in g.constants:
        if c.data is None:
            raise InputError(f"constant %{c.name} has no data (parsed from text without it)")
        vals[id(c)] = c.data
    for n in g.nodes:
        outs = run_node(n, [vals[id(i)] for i in n.inputs], env)
        for o, a in zip(n.outputs, outs):
            vals[id(o)] = a
            if trace is not None:
                trace[o.name] = a
    return [vals[id(o)] for o in g.outputs]
