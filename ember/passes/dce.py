"""Dead-code elimination: drop nodes and constants no output depends on."""
from __future__ import annotations


def eliminate_dead_code(g):
    live = {id(v) for v in g.outputs}
    kept = []
    for n in reversed(g.nodes):
        if any(id(o) in live for o in n.outputs):
            kept.append(n)
            live.update(id(i) for i in n.inputs)
    g.nodes = kept[::-1]
    g.constants = [c for c in g.constants if id(c) in live]
    return g
