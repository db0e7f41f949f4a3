"""Constant folding: nodes whose inputs are all constants are evaluated at compile time.

The reference interpreter computes them, so a folded value means exactly what the op
means. Weight transposes, casts and reshapes of weights disappear from the runtime graph.
Results much larger than their inputs (an expand of a scalar to a big tensor) are left
alone: storing them would cost more memory than computing them.
"""
from __future__ import annotations

import numpy as np

from ..ir.interpreter import run_node
from ..ir.symbolic import SymExpr

MAX_GROWTH = 4          # folded result may be at most this many times its inputs' size...
MIN_ALLOWED = 1 << 16   # ...or this many elements, whichever is larger


def _static(attrs) -> bool:
    def ok(v):
        if isinstance(v, SymExpr):
            return False
        if isinstance(v, tuple):
            return all(ok(x) for x in v)
        return True
    return all(ok(v) for v in attrs.values())


def fold_constants(g):
    kept = []
    for n in g.nodes:
        if all(i.kind == "const" and i.data is not None for i in n.inputs) and _static(n.attrs) \
                and all(o.type.is_static for o in n.outputs):
            in_size = sum(i.data.size for i in n.inputs)
            out_size = sum(int(np.prod(o.shape)) for o in n.outputs)
            if out_size <= max(MAX_GROWTH * in_size, MIN_ALLOWED):
                outs = run_node(n, [i.data for i in n.inputs], {})
                for o, a in zip(n.outputs, outs):
                    c = g.add_const(a, name=f"{n.name}_folded", dtype=o.dtype)
                    g.replace_uses(o, c)
                continue
        kept.append(n)
    g.nodes = kept
    return g
