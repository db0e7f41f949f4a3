"""Common-subexpression elimination: one node per (op, inputs, attrs); equal constants merged."""
from __future__ import annotations

import hashlib

SMALL_CONST = 1 << 16  # elements; larger constants are compared only by identity


def _key_attrs(attrs) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in attrs.items()))


def eliminate_common_subexpressions(g):
    canon: dict = {}
    # equal small constants (scalars from a frontend, repeated masks) become one
    seen: dict = {}
    for c in g.constants:
        if c.data is not None and c.data.size <= SMALL_CONST:
            k = (c.dtype.name, c.data.shape, hashlib.sha1(c.data.tobytes()).hexdigest())
            if k in seen:
                canon[id(c)] = seen[k]
            else:
                seen[k] = c
    exprs: dict = {}
    for n in g.nodes:
        n.inputs = [canon.get(id(i), i) for i in n.inputs]
        key = (n.op, tuple(id(i) for i in n.inputs), _key_attrs(n.attrs))
        if key in exprs:
            for old, new in zip(n.outputs, exprs[key].outputs):
                canon[id(old)] = new
        else:
            exprs[key] = n
    g.outputs = [canon.get(id(o), o) for o in g.outputs]
    from .dce import eliminate_dead_code
    return eliminate_dead_code(g)
