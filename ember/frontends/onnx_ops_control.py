"""ONNX converters, continued from onnx_ops.py: If, Loop and Scan, expanded at import time (Ember graphs are straight-line)."""
from __future__ import annotations

import sys

import numpy as np

from ..ir import dtypes
from ..ir.graph import Value
from .onnx import Known, Unsupported, onnx_dtype
from .onnx_ops import _axis, _rank, _reshape, _unsqueeze, conv


# ---------------------------------------------------------------- control flow, resolved at compile time
#
# Ember graphs are straight-line, so If, Loop and Scan are expanded while importing: If
# takes the branch its (compile-time) condition picks, Scan and Loop are unrolled over
# their static trip counts. A condition or trip count computed from the data at run time
# is reported like any other input needed at compile time (NeedsConstant).

_MAX_UNROLL = 4096


def _run_subgraph(cx, g, bind: dict, what: str) -> list:
    """Convert ONNX subgraph ``g`` inline, its formal inputs bound to ``bind`` (name ->
    Value or Known); returns the values of its outputs. Outer-scope names stay visible."""
    from .onnx import NeedsConstant, _check_graph, _convert_node, tensor_to_numpy
    saved = (cx.node, cx.raw, cx.source)
    for t in g.initializer:
        cx.env[t.name] = cx.const_array(tensor_to_numpy(t), onnx_dtype(t.data_type))
    cx.env.update(bind)
    unsupported, needs = [], set()
    made = {o for n in g.node for o in n.output}  # (re)defined by this pass over the body
    for n in _check_graph(g, set(cx.env) - made):
        _convert_node(cx, n, sys.modules[__package__ + ".onnx_ops"], unsupported, needs, depth=1)
    cx.node, cx.raw, cx.source = saved
    if needs:
        raise NeedsConstant(f"{what} needs values known at compile time", needs)
    if unsupported:
        raise Unsupported(f"{what}: " + "; ".join(f"{u['op']} ({u['source'] or u['node']})"
                                                 for u in unsupported))
    return [cx.env[o.name] for o in g.output]


def _as_value(cx, v):
    return cx.materialize(v) if isinstance(v, Known) else v


@conv("If")
def _if(cx, ins, a):
    cond = bool(cx.scalar(0))
    branch = a["then_branch" if cond else "else_branch"].g
    return _run_subgraph(cx, branch, {}, f"If's {'then' if cond else 'else'} branch")


def _stack(cx, parts, axis):
    """Tensors of one shape stacked along a new ``axis``."""
    r = _rank(parts[0]) + 1
    ax = _axis(axis, r)
    parts = [_unsqueeze(cx, p, [ax]) for p in parts]
    return parts[0] if len(parts) == 1 else cx.op("concat", parts, {"axis": ax})


@conv("Scan")
def _scan(cx, ins, a):
    if cx.opset < 9:
        return _scan8(cx, ins, a)
    return _scan_values(cx, list(ins), a)


def _scan8(cx, ins, a):
    """Scan-8: every input has a leading batch dim (scanned along dim 1) and the sequence
    lengths come first; each batch entry is scanned on its own and the results restacked."""
    if cx.has(0):
        lens = cx.const_value(0)
        if lens is None or len(set(np.asarray(lens).reshape(-1).tolist())) > 1:
            raise Unsupported("Scan-8 with per-batch sequence_lens")
    vals = [v for v in ins][1:]
    B = vals[0].shape[0]
    if not isinstance(B, int):
        raise Unsupported("Scan-8 over a dynamic batch")
    attrs = {**a, "scan_input_directions": a.get("directions", [0] * a["num_scan_inputs"])}
    per_batch = []
    for b in range(B):
        row = [_reshape(cx, cx.op("slice", [v], {"axis": 0, "start": b, "end": b + 1}), v.shape[1:]) for v in vals]
        per_batch.append(_scan_values(cx, row, attrs))
    return [_stack(cx, [r[j] for r in per_batch], 0) for j in range(len(per_batch[0]))]


def _scan_values(cx, vals, a):
    body = a["body"].g
    n_scan = a["num_scan_inputs"]
    states, xs = vals[:len(vals) - n_scan], vals[len(vals) - n_scan:]
    in_axes = list(a.get("scan_input_axes", [0] * n_scan))
    in_dirs = list(a.get("scan_input_directions", [0] * n_scan))
    n_out = len(body.output) - len(states)
    out_axes = list(a.get("scan_output_axes", [0] * n_out))
    out_dirs = list(a.get("scan_output_directions", [0] * n_out))
    in_axes = [_axis(ax, _rank(x)) for ax, x in zip(in_axes, xs)]
    lengths = {x.shape[ax] for x, ax in zip(xs, in_axes)}
    if len(lengths) != 1 or not isinstance(next(iter(lengths)), int):
        raise Unsupported("Scan over scan inputs of different or dynamic lengths")
    T = next(iter(lengths))
    if T > _MAX_UNROLL:
        raise Unsupported(f"Scan over {T} steps (unrolled; at most {_MAX_UNROLL})")
    names = [i.name for i in body.input]
    outs = [[] for _ in range(n_out)]
    for t in range(T):
        step = []
        for x, ax, rev in zip(xs, in_axes, in_dirs):
            k = T - 1 - t if rev else t
            s = cx.op("slice", [x], {"axis": ax, "start": k, "end": k + 1})
            step.append(_reshape(cx, s, [d for j, d in enumerate(x.shape) if j != ax]))
        res = _run_subgraph(cx, body, dict(zip(names, states + step)), f"Scan body (step {t})")
        states = [_as_value(cx, v) for v in res[:len(states)]]
        for j, v in enumerate(res[len(states):]):
            outs[j].append(_as_value(cx, v))
    stacked = []
    for j, parts in enumerate(outs):
        if out_dirs[j]:
            parts = parts[::-1]
        stacked.append(_stack(cx, parts, out_axes[j]))
    return states + stacked


@conv("Loop")
def _loop(cx, ins, a):
    body = a["body"].g
    trips = int(cx.scalar(0)) if cx.has(0) else None
    cond = bool(cx.scalar(1)) if cx.has(1) else True
    carried = [v for v in cx.raw[2:]]
    names = [i.name for i in body.input]
    n_carried = len(carried)
    scans: list[list] = [[] for _ in range(len(body.output) - 1 - n_carried)]
    it = 0
    while cond and (trips is None or it < trips):
        if it >= _MAX_UNROLL:
            raise Unsupported(f"Loop of more than {_MAX_UNROLL} iterations (unrolled at compile time)")
        bind = dict(zip(names, [cx.const_array(np.array(it, np.int64), dtypes.i64),
                                cx.const_array(np.array(cond), dtypes.bool_)] + carried))
        res = _run_subgraph(cx, body, bind, f"Loop body (iteration {it})")
        c = res[0]
        cv = c.data if isinstance(c, Value) and c.kind == "const" else None
        if cv is None:
            raise Unsupported("Loop whose condition is computed from run-time data")
        cond = bool(np.asarray(cv).reshape(-1)[0])
        carried = res[1:1 + n_carried]
        for j, v in enumerate(res[1 + n_carried:]):
            scans[j].append(_as_value(cx, v))
        it += 1
    if any(not s for s in scans):
        raise Unsupported("Loop with scan outputs and zero iterations (an empty tensor)")
    return [_as_value(cx, v) for v in carried] + [_stack(cx, s, 0) for s in scans]
