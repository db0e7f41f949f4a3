"""Parse the text IR written by printer.py back into a Graph.

Large constants print without their data; pass ``constants={name: array}`` to attach it.
Types in the text are checked against the op's inference rule, so a hand-written graph
with a wrong type is rejected with the line that has it.
"""
from __future__ import annotations

import re

import numpy as np

from ..errors import EmberError, ParseError
from . import dtypes
from .graph import Graph, Node, TensorType, Value
from .ops import get
from .symbolic import parse_dim

_HEADER = re.compile(r"^graph\s+(\w+)\s*\((.*)\)\s*->\s*\((.*)\)\s*\{$")
_CONST = re.compile(r"^%(\w+)\s*=\s*const\s*(\[.*\])?\s*:\s*(.+)$")
_NODE = re.compile(r"^(%\w+(?:\s*,\s*%\w+)*)\s*=\s*(\w+)\((.*?)\)\s*(\{.*\})?\s*:\s*(.+?)(?:\s+loc\((\".*\")\))?$")
_RETURN = re.compile(r"^return\s*(.*)$")


def split_top(s: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets and quotes."""
    out, depth, cur, quote = [], 0, "", False
    i = 0
    while i < len(s):
        ch = s[i]
        if quote:
            cur += ch
            if ch == "\\":
                cur += s[i + 1]
                i += 1
            elif ch == '"':
                quote = False
        elif ch == '"':
            quote, cur = True, cur + ch
        elif ch in "[({":
            depth, cur = depth + 1, cur + ch
        elif ch in "])}":
            depth, cur = depth - 1, cur + ch
        elif ch == sep and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
        i += 1
    if cur.strip():
        out.append(cur.strip())
    return out


def parse_type(s: str) -> TensorType:
    m = re.fullmatch(r"\s*(\w+)\[(.*)\]\s*", s)
    if not m:
        raise ParseError(f"bad tensor type {s!r}; expected like f32[batch, 10]")
    dims = tuple(parse_dim(d) for d in split_top(m.group(2)))
    return TensorType(dtypes.parse(m.group(1)), dims)


def _parse_str(s: str) -> str:
    if not (s.startswith('"') and s.endswith('"')):
        raise ParseError(f"expected a quoted string, got {s}")
    return re.sub(r"\\(.)", r"\1", s[1:-1])


def _parse_attr(kind: str, s: str):
    if s == "None":
        return None
    if kind in ("ints", "dims", "floats"):
        if not (s.startswith("[") and s.endswith("]")):
            raise ParseError(f"expected a list, got {s}")
        items = split_top(s[1:-1])
        conv = {"ints": int, "floats": float, "dims": parse_dim}[kind]
        return tuple(conv(x) for x in items)
    if kind == "int":
        return int(s)
    if kind == "float":
        return float(s)
    if kind == "bool":
        return {"true": True, "false": False}[s]
    if kind == "dim":
        return parse_dim(s)
    if kind == "dtype":
        return dtypes.parse(s)
    if kind == "str":
        return _parse_str(s)
    raise ParseError(f"unknown attribute kind {kind}")


def _parse_scalar(s: str, dt):
    if s in ("true", "false"):
        return s == "true"
    return float(s) if dt.is_float else int(s)


def parse(text: str, constants: dict[str, np.ndarray] | None = None) -> Graph:
    """Build a Graph from its text form; ``constants`` supplies data for large constants."""
    constants = constants or {}
    lines = [ln.strip() for ln in text.strip().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]  # whole-line comments only
    if not lines:
        raise ParseError("empty text")
    m = _HEADER.match(lines[0])
    if not m:
        raise ParseError(f"line 1: expected 'graph NAME(%x: f32[...]) -> (...) {{', got {lines[0]!r}")
    g = Graph(m.group(1))
    env: dict[str, Value] = {}

    def define(v: Value, lineno: int):
        if v.name in env:
            raise ParseError(f"line {lineno}: %{v.name} defined twice")
        env[v.name] = v
        g.reserve_name(v.name)

    for part in split_top(m.group(2)):
        name, _, ty = part.partition(":")
        v = Value(name.strip().lstrip("%"), parse_type(ty), "input")
        g.inputs.append(v)
        define(v, 1)

    for lineno, ln in enumerate(lines[1:], start=2):
        try:
            if ln == "}":
                break
            if (r := _RETURN.match(ln)):
                g.outputs = [_lookup(env, x.strip().lstrip("%"), lineno) for x in split_top(r.group(1))]
                continue
            if (c := _CONST.match(ln)):
                ty = parse_type(c.group(3))
                data = constants.get(c.group(1))
                if c.group(2):
                    vals = [_parse_scalar(x, ty.dtype) for x in split_top(c.group(2)[1:-1])]
                    data = np.array(vals, dtype=ty.dtype.np).reshape([int(d) for d in ty.shape])
                v = Value(c.group(1), ty, "const", data=data)
                g.constants.append(v)
                define(v, lineno)
                continue
            n = _NODE.match(ln)
            if not n:
                raise ParseError(f"cannot parse {ln!r}")
            _parse_node(g, env, n, lineno, define)
        except EmberError as e:
            if isinstance(e, ParseError) and str(e).startswith("line "):
                raise
            raise ParseError(f"line {lineno}: {e}") from e
        except (ValueError, KeyError) as e:
            raise ParseError(f"line {lineno}: {e}") from e
    from .verify import verify
    verify(g)
    return g


def _lookup(env, name, lineno) -> Value:
    if name not in env:
        raise ParseError(f"line {lineno}: %{name} is used before it is defined")
    return env[name]


def _parse_node(g, env, m, lineno, define):
    outs = [x.strip().lstrip("%") for x in m.group(1).split(",")]
    opdef = get(m.group(2))
    ins = [_lookup(env, x.strip().lstrip("%"), lineno) for x in split_top(m.group(3))]
    attrs = {}
    if m.group(4):
        for item in split_top(m.group(4)[1:-1]):
            k, _, v = item.partition("=")
            k = k.strip()
            if k not in opdef.attrs:
                raise ParseError(f"op {opdef.name} has no attribute {k!r}")
            attrs[k] = _parse_attr(opdef.attrs[k].kind, v.strip())
    types = [parse_type(t) for t in split_top(m.group(5))]
    if len(types) != len(outs):
        raise ParseError(f"{len(outs)} results but {len(types)} types")
    source = _parse_str(m.group(6)) if m.group(6) else None
    attrs = opdef.check_attrs(attrs)
    opdef.check_arity(len(ins))
    for name, t, want in zip(outs, types, opdef.infer([i.type for i in ins], attrs)):
        if t != want:
            raise ParseError(f"%{name} is typed {t} but the op infers {want}")
    node = Node(opdef.name, ins, attrs, [], name=g.fresh_name(opdef.name), source=source)
    for name, t in zip(outs, types):
        v = Value(name, t, "node", producer=node)
        node.outputs.append(v)
        define(v, lineno)
    g.nodes.append(node)
