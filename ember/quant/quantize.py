"""The rewrite of an optimized fp32 graph to int8 ops, with calibration, the accuracy guard,
the speed check and the report. Entry point: ``quantize_graph`` (called by ``ember.compile``).
"""
from __future__ import annotations

import fnmatch
import warnings

import numpy as np

from ..errors import CalibrationError, EmberError, InputError, QuantizationError
from ..ir import Graph, dtypes
from ..ir.interpreter import interpret
from .config import QuantConfig, normalize
from .observers import Observer, qparams
from .report import LayerReport, QuantReport, cosine, sqnr_db


class QuantizationWarning(UserWarning):
    """Quantization did less than asked: nothing to quantize, a layer kept in fp32, int8
    slower than fp32, an accuracy budget that could not be met."""


# -- which nodes

def _weight_of(n):
    """The constant fp32 weight of a quantizable node as [N, K...] (output channels first),
    or (None, reason)."""
    if n.op not in ("linear", "matmul", "conv2d"):
        return None, "not a quantizable op"
    if len(n.inputs) < 2 or any(v.dtype is not dtypes.f32 for v in n.inputs[:2]):
        return None, "not float32"
    x, w = n.inputs[0], n.inputs[1]
    if w.kind != "const" or w.data is None:
        return None, "weight is not a constant"
    if x.kind == "const":
        return None, "input is a constant"
    if n.op == "linear":
        return w.data, ""
    if n.op == "matmul":
        if w.type.rank != 2 or x.type.rank < 2:
            return None, "matmul is not activation @ 2-D weight"
        return np.ascontiguousarray(w.data.T), ""
    if w.type.rank != 4 or x.type.rank != 4:
        return None, "conv2d is not 4-D"
    return w.data, ""


def _select(graph: Graph, cfg: QuantConfig):
    layers, chosen = {}, []
    for n in graph.nodes:
        if n.op not in ("linear", "matmul", "conv2d"):
            continue
        w, why = _weight_of(n)
        if w is None and n.op == "matmul" and n.inputs[1].kind != "const":
            continue  # activation @ activation (attention scores): not a weight layer, not reported
        lr = LayerReport(n.name, n.op)
        if w is None:
            lr.reason = why
        elif n.op not in cfg.ops or n.op in cfg.skip_ops:
            lr.reason = f"op type {n.op} skipped"
        elif any(fnmatch.fnmatchcase(n.name, p) for p in cfg.skip_nodes):
            lr.reason = "node name skipped"
        else:
            chosen.append(n.name)
        layers[n.name] = lr
    return layers, chosen


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric int8: (wq in [-127, 127], scale[N] f32)."""
    w = np.asarray(w, np.float32)
    flat = w.reshape(w.shape[0], -1)
    amax = np.abs(flat).max(axis=1)
    scale = (amax / np.float32(127)).astype(np.float32)
    scale[scale == 0] = 1.0
    shape = (-1,) + (1,) * (w.ndim - 1)
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


# -- data

def _as_numpy(a):
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def prepare_batches(graph: Graph, batches, what: str = "calibration") -> list[list[np.ndarray]]:
    """Batches (tuples in input order, dicts by name, or arrays for a one-input model) as lists
    of numpy arrays in graph-input order; CalibrationError names the batch and input at fault."""
    names = [v.name for v in graph.inputs]
    out = []
    for k, b in enumerate(batches):
        if isinstance(b, dict):
            missing = [n for n in names if n not in b]
            if missing:
                raise CalibrationError(f"{what} batch {k}: missing input(s) {', '.join(missing)} "
                                       f"(the model's inputs are {', '.join(names)})")
            arrs = [b[n] for n in names]
        elif isinstance(b, (list, tuple)):
            arrs = list(b)
        else:
            arrs = [b]
        if len(arrs) != len(names):
            raise CalibrationError(f"{what} batch {k}: {len(arrs)} input(s) given, the model takes "
                                   f"{len(names)} ({', '.join(names)})")
        arrs = [_as_numpy(a) for a in arrs]
        for a, v in zip(arrs, graph.inputs):
            if a.ndim != len(v.shape):
                raise CalibrationError(f"{what} batch {k}: input {v.name!r} has shape {a.shape}, "
                                       f"expected {v.type} (rank {len(v.shape)})")
            if a.dtype.kind != v.dtype.np.kind and not (a.dtype.kind in "iu" and v.dtype.np.kind in "iu"):
                raise CalibrationError(f"{what} batch {k}: input {v.name!r} has dtype {a.dtype}, "
                                       f"expected {v.dtype}")
        arrs = [a.astype(v.dtype.np, copy=False) for a, v in zip(arrs, graph.inputs)]
        try:
            from ..ir.interpreter import bind_symbols
            bind_symbols(graph, arrs)
        except InputError as e:
            raise CalibrationError(f"{what} batch {k}: {e}") from None
        out.append(arrs)
    return out


def _run(graph, batches, keep: set[str] | None = None):
    """Outputs per batch and, when ``keep`` is given, those traced values per batch."""
    outs, traces = [], []
    for b in batches:
        tr: dict | None = {} if keep else None
        outs.append(interpret(graph, b, trace=tr))
        if keep:
            traces.append({k: v for k, v in tr.items() if k in keep})
    return outs, traces


def _output_cosines(ref_outs, q_outs) -> list[float]:
    """Cosine per sample (rows of the first axis) of every float output, over all batches."""
    cos = []
    for ro, qo in zip(ref_outs, q_outs):
        for r, q in zip(ro, qo):
            if r.dtype.kind != "f":
                continue
            if r.ndim >= 2 and r.shape[0] > 1:
                cos += [cosine(r[i], q[i]) for i in range(r.shape[0])]
            else:
                cos.append(cosine(r, q))
    return cos


# -- rewrite

def rewrite(graph: Graph, names, cfg: QuantConfig, weights: dict, acts: dict):
    """A copy of ``graph`` with the nodes in ``names`` running int8; returns (graph, outmap)
    where outmap maps a node name to the name of its new output value."""
    g = graph.clone()
    names = set(names)
    old_nodes, g.nodes = g.nodes, []
    remap: dict[int, object] = {}
    qcache: dict = {}
    outmap: dict[str, str] = {}
    adt = dtypes.parse(cfg.activation_dtype)
    for n in old_nodes:
        n.inputs = [remap.get(id(i), i) for i in n.inputs]
        if n.name not in names:
            g.nodes.append(n)
            continue
        x = n.inputs[0]
        conv = n.op == "conv2d"
        if cfg.mode == "dynamic":
            per_row = cfg.per_row and not conv
            key = (id(x), per_row)
            if key not in qcache:
                # reduce_range: 7-bit u8 codes, the exact fast AVX2 route of the int8 GEMM
                attrs = {"per_row": per_row, "dtype": adt, "reduce_range": cfg.reduce_range and adt is dtypes.u8}
                qcache[key] = g.op("dynamic_quantize", [x], attrs,
                                   name=g.fresh_name(f"{n.name}_dq"))
        else:
            key = (id(x),)
            if key not in qcache:
                scale, zp = acts[x.name]
                s = g.add_const(np.float32(scale), f"{n.name}_xs")
                z = g.add_const(np.array(zp, adt.np), f"{n.name}_xzp")
                q = g.op("quantize_linear", [x, s, z], name=g.fresh_name(f"{n.name}_q"))
                qcache[key] = [q, s, z]
        q, s, z = qcache[key]
        wq, ws = weights[n.name]
        wqc = g.add_const(wq, f"{n.name}_wq")
        wsc = g.add_const(ws, f"{n.name}_ws")
        bias = list(n.inputs[2:3]) if n.op in ("linear", "conv2d") else []
        if conv:
            new = g.op("quant_conv2d", [q, s, z, wqc, wsc] + bias, dict(n.attrs), name=n.name, source=n.source)
        else:
            new = g.op("quant_linear", [q, s, z, wqc, wsc] + bias, name=n.name, source=n.source)
        remap[id(n.outputs[0])] = new
        outmap[n.name] = new.name
    g.outputs = [remap.get(id(o), o) for o in g.outputs]
    used = {id(i) for n in g.nodes for i in n.inputs} | {id(o) for o in g.outputs}
    g.constants = [c for c in g.constants if id(c) in used]
    return g, outmap


def const_bytes(g: Graph) -> int:
    used = {id(i) for n in g.nodes for i in n.inputs} | {id(o) for o in g.outputs}
    return int(sum(c.data.nbytes for c in g.constants if c.data is not None and id(c) in used))


# -- the driver

def quantize_graph(graph: Graph, quantize, example_inputs=None):
    """Rewrite ``graph`` (optimized, fp32) to int8 where asked and where it pays.

    Returns (graph, QuantReport). Called by ``ember.compile(..., quantize=...)``.
    """
    from ..ir import verify as verify_graph
    cfg = normalize(quantize)
    report = QuantReport(cfg.mode, cfg.observer if cfg.mode == "static" else None, budget=cfg.min_cosine)
    report.fp32_bytes = report.int8_bytes = const_bytes(graph)
    layers, chosen = _select(graph, cfg)
    report.layers = list(layers.values())
    if not chosen:
        why = ("the model has no linear, matmul-with-weight or conv2d layer" if not layers else
               "every candidate layer was skipped: " +
               "; ".join(f"{lr.name}: {lr.reason}" for lr in layers.values()))
        warnings.warn(f"ember.quant: nothing to quantize ({why}); compiling in fp32",
                      QuantizationWarning, stacklevel=3)
        report.notes.append(f"nothing to quantize: {why}")
        return graph, report

    # data: calibration (static) and evaluation (guard + report)
    calib = prepare_batches(graph, cfg.calibration) if cfg.mode == "static" else []
    if cfg.eval_data is not None:
        ev = cfg.eval_data
        ev = prepare_batches(graph, ev if isinstance(ev, list) else [ev], "evaluation")
    elif calib:
        ev = calib[:max(1, cfg.max_eval_batches)]
    elif example_inputs is not None:
        ev = prepare_batches(graph, [example_inputs], "example input")
    else:
        ev = []
    if cfg.min_cosine is not None and not ev:
        raise QuantizationError("the accuracy guard (min_cosine) needs data to measure on: pass "
                                "example inputs to ember.compile or eval_data=[...] to ember.quant.dynamic")

    weights = {}
    for name in chosen:
        n = next(m for m in graph.nodes if m.name == name)
        w, _ = _weight_of(n)
        weights[name] = quantize_weight(w)
        lr = layers[name]
        lr.weight_scale = (float(weights[name][1].min()), float(weights[name][1].max()))

    acts: dict = {}
    if cfg.mode == "static":
        acts = calibrate(graph, chosen, calib, cfg)
        for name in chosen:
            n = next(m for m in graph.nodes if m.name == name)
            s, z = acts[n.inputs[0].name]
            layers[name].act_scale, layers[name].act_zero_point = float(s), int(z)
            layers[name].activation = f"static {cfg.activation_dtype}"
    else:
        for name in chosen:
            per_row = cfg.per_row and layers[name].op != "conv2d"
            layers[name].activation = f"dynamic {'per row' if per_row else 'per tensor'} {cfg.activation_dtype}"

    qgraph, outmap = rewrite(graph, chosen, cfg, weights, acts)
    kept = list(chosen)
    out_names = {n.name: n.outputs[0].name for n in graph.nodes if n.name in layers}

    ref_outs, ref_tr = _run(graph, ev, {out_names[k] for k in chosen}) if ev else ([], [])
    if ev and cfg.min_cosine is not None:
        q_outs, _ = _run(qgraph, ev)
        cos = _output_cosines(ref_outs, q_outs)
        if cfg.min_cosine is not None and np.mean(cos) < cfg.min_cosine:
            qgraph, outmap, kept = _guard(graph, cfg, chosen, weights, acts, ev, ref_outs, layers,
                                          report, float(np.mean(cos)))
    for name in kept:
        layers[name].status, layers[name].reason = "int8", ""

    if not kept:
        report.notes.append("no layer stays int8 within the accuracy budget; compiled in fp32")
        return graph, report

    verify_graph(qgraph)
    if ev:  # final per-layer and output statistics
        q_outs, q_tr = _run(qgraph, ev, set(outmap.values()))
        cos = _output_cosines(ref_outs, q_outs)
        report.output_cosine, report.output_cosine_min = float(np.mean(cos)), float(np.min(cos))
        report.eval_samples = len(cos)
        for name in kept:
            r = np.concatenate([t[out_names[name]].ravel() for t in ref_tr])
            q = np.concatenate([t[outmap[name]].ravel() for t in q_tr])
            layers[name].cosine, layers[name].sqnr_db = cosine(r, q), sqnr_db(r, q)
    else:
        report.notes.append("no data to measure accuracy on (pass example inputs or eval data)")
    report.int8_bytes = const_bytes(qgraph)
    report.quantized = True

    if cfg.check_speed and example_inputs is not None:
        qgraph = _speed_check(graph, qgraph, example_inputs, cfg, report, layers)
    elif cfg.check_speed:
        report.notes.append("speed not compared with fp32 (no example inputs)")
    return qgraph, report


def calibrate(graph: Graph, chosen, batches, cfg: QuantConfig) -> dict:
    """Run the calibration batches through the reference interpreter; returns
    {activation value name: (scale, zero point)} for the inputs of the chosen layers."""
    by_name = {n.name: n for n in graph.nodes}
    xs = {by_name[c].inputs[0].name: by_name[c].inputs[0] for c in chosen}
    obs = {k: Observer(cfg.observer, cfg.percentile) for k in xs}
    in_pos = {v.name: k for k, v in enumerate(graph.inputs)}
    for b in batches:
        tr: dict = {}
        try:
            interpret(graph, b, trace=tr)
        except EmberError as e:
            raise CalibrationError(f"calibration failed: {e}") from None
        for k in xs:
            obs[k].observe(b[in_pos[k]] if k in in_pos else tr[k])
    sym = cfg.activation_dtype == "i8"
    return {k: qparams(*o.range(sym), cfg.activation_dtype) for k, o in obs.items()}


def _guard(graph, cfg, chosen, weights, acts, ev, ref_outs, layers, report, full_cos):
    """Keep the most sensitive layers in fp32 until the output cosine meets the budget."""
    budget = cfg.min_cosine
    sens = {}
    for name in chosen:
        g1, _ = rewrite(graph, [name], cfg, weights, acts)
        c = float(np.mean(_output_cosines(ref_outs, _run(g1, ev)[0])))
        sens[name] = 1.0 - c
        layers[name].sensitivity = sens[name]
    kept = list(chosen)
    qgraph, outmap, c = None, {}, full_cos
    for name in sorted(chosen, key=lambda k: -sens[k]):
        kept.remove(name)
        layers[name].reason = (f"accuracy guard: sensitivity {sens[name]:.2e} "
                               f"(output cosine {1 - sens[name]:.5f} with this layer alone int8)")
        if not kept:
            break
        qgraph, outmap = rewrite(graph, kept, cfg, weights, acts)
        c = float(np.mean(_output_cosines(ref_outs, _run(qgraph, ev)[0])))
        if c >= budget:
            break
    report.notes.append(f"accuracy guard: all layers int8 gave cosine {full_cos:.5f} < budget {budget}; "
                        f"{len(chosen) - len(kept)} most sensitive layer(s) kept in fp32")
    if not kept:
        warnings.warn(f"ember.quant: the accuracy budget (min_cosine={budget}) is not met with any "
                      f"layer in int8; compiling in fp32", QuantizationWarning, stacklevel=4)
    return qgraph, outmap, kept


def _speed_check(graph, qgraph, example_inputs, cfg, report, layers):
    from ..timing import measure
    ins = prepare_batches(graph, [example_inputs], "example input")[0]
    from ..api import build_graph
    fp, q = build_graph(graph)[0], build_graph(qgraph)[0]
    t = measure({"fp32": lambda: fp.run(ins), "int8": lambda: q.run(ins)}, rounds=40, warmup=2,
                max_seconds=3.0)
    report.fp32_ms, report.int8_ms = t["fp32"]["median"] * 1e3, t["int8"]["median"] * 1e3
    if report.int8_ms <= report.fp32_ms:
        return qgraph
    msg = (f"int8 is slower than fp32 for this model here ({report.int8_ms:.3f} ms vs "
           f"{report.fp32_ms:.3f} ms at the example inputs' shapes)")
    if cfg.force:
        warnings.warn(f"ember.quant: {msg}; keeping int8 because force=True", QuantizationWarning, stacklevel=4)
        report.notes.append(msg + "; kept int8 (force=True)")
        return qgraph
    warnings.warn(f"ember.quant: {msg}; compiling in fp32 (pass force=True to keep int8)",
                  QuantizationWarning, stacklevel=4)
    report.notes.append(msg + "; compiled in fp32 (force=True keeps int8)")
    for lr in layers.values():
        if lr.status == "int8":
            lr.status, lr.reason = "fp32", "int8 slower than fp32 for the whole model"
    report.quantized = False
    report.int8_bytes = report.fp32_bytes
    return graph
