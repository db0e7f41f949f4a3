"""Text form of a graph. ``parse(print_graph(g))`` rebuilds ``g`` (see parser.py).

    graph main(%x: f32[batch, 10]) -> (f32[batch, 1]) {
      %w = const : f32[1, 10]
      %0 = linear(%x, %w) : f32[batch, 1]
      return %0
    }
"""
from __future__ import annotations

import numpy as np

from .dtypes import DType

INLINE_CONST_LIMIT = 8  # constants with at most this many elements print their values


def format_attr(v) -> str:
    if v is None:
        return "None"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, DType):
        return v.name
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(format_attr(x) for x in v) + "]"
    return str(v)


def format_scalar(x) -> str:
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    # ml_dtypes.bfloat16 is no np.floating, but a float all the same
    bf16 = getattr(getattr(x, "dtype", None), "name", "") == "bfloat16"
    if isinstance(x, (np.floating, float)) or bf16:
        return repr(float(x))
    return str(int(x))


def format_const(v) -> str:
    if v.data is not None and v.data.size <= INLINE_CONST_LIMIT:
        vals = ", ".join(format_scalar(x) for x in v.data.reshape(-1))
        return f"%{v.name} = const [{vals}] : {v.type}"
    return f"%{v.name} = const : {v.type}"


def format_node(n) -> str:
    outs = ", ".join(f"%{o.name}" for o in n.outputs)
    ins = ", ".join(f"%{i.name}" for i in n.inputs)
    s = f"{outs} = {n.op}({ins})"
    if n.attrs:
        s += " {" + ", ".join(f"{k}={format_attr(v)}" for k, v in n.attrs.items()) + "}"
    s += " : " + ", ".join(str(o.type) for o in n.outputs)
    if n.source:
        s += f" loc({format_attr(n.source)})"
    return s


def print_graph(g) -> str:
    ins = ", ".join(f"%{v.name}: {v.type}" for v in g.inputs)
    outs = ", ".join(str(v.type) for v in g.outputs)
    lines = [f"graph {g.name}({ins}) -> ({outs}) {{"]
    lines += ["  " + format_const(c) for c in g.constants]
    lines += ["  " + format_node(n) for n in g.nodes]
    lines.append("  return " + ", ".join(f"%{v.name}" for v in g.outputs))
    lines.append("}")
    return "\n".join(lines)
