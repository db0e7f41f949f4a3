"""``fallback="torch"``: compile what Ember supports, run the rest with PyTorch.

    compiled = ember.compile(model, (x,), fallback="torch")   # warns once, listing the ops

Design. The PyTorch frontend has already exported the model (``torch.export``, core ATen) and
found the nodes it cannot translate; it hands that program over on the error. Every FX node
gets a *level*: the number of unsupported nodes on the longest dependency chain before it.
All supported tensor nodes of one level form one segment, imported by the same converters
into its own Ember graph and compiled by ``ember.compile`` (one native call per segment,
symbolic dims kept, so dynamic shapes still need one compile). Unsupported nodes run as the
ATen calls they are, in graph order, between the segments of their level and the next. So a
model with one odd op in the middle becomes two native calls around one PyTorch op; the
number of segments is the longest chain of unsupported ops plus one, however they interleave.

Size arithmetic nodes (``sym_size`` and friends) run in PyTorch on the real tensors and are
also rebuilt inside each segment from their symbolic form. A supported node whose import
still fails in its segment (e.g. it reads a size only known at run time) moves to PyTorch
and the partition is recomputed, so the result is always correct.
"""
from __future__ import annotations

import types
import warnings

import numpy as np

from .errors import InputError, UnsupportedOpError

__all__ = ["compile_with_fallback", "FallbackModel", "FallbackWarning"]


class FallbackWarning(UserWarning):
    """Parts of a model run through PyTorch instead of Ember's compiled code."""


class _Segment:
    def __init__(self, level, nodes):
        self.level, self.nodes = level, nodes
        self.inputs: list = []       # FX nodes whose tensors the segment reads
        self.feeds: list = []        # those that are graph inputs (the rest are weights)
        self.carriers: list = []     # symbols no input dim binds: fed as empty [n] tensors
        self.outputs: list = []      # FX nodes it computes for later steps
        self.aliases: dict = {}      # FX output node -> FX node it is (an identity result)
        self.compiled = None


def _is_sized(node) -> bool:
    """A size computation (SymInt / int / bool result) rather than tensor work."""
    import torch
    v = node.meta.get("val")
    return isinstance(v, (torch.SymInt, torch.SymBool, torch.SymFloat, int, float, bool)) or v is None


def _partition(ep, torch_nodes: set):
    """Steps in run order: ('ember', _Segment) and ('torch', node).

    A node's level is the number of PyTorch nodes on its longest dependency chain; the
    supported tensor nodes of one level form one segment, run before that level's PyTorch
    nodes. Size arithmetic is no step: segments rebuild it, PyTorch steps evaluate it.
    """
    level: dict = {}
    for n in ep.graph.nodes:
        lv = 0
        for a in n.all_input_nodes:
            lv = max(lv, level[a] + (1 if a in torch_nodes else 0))
        level[n] = lv if n.op == "call_function" else 0
    ember_by_level: dict[int, list] = {}
    torch_by_level: dict[int, list] = {}
    for n in ep.graph.nodes:
        if n.op != "call_function":
            continue
        if n in torch_nodes:
            torch_by_level.setdefault(level[n], []).append(n)
        elif not _is_sized(n):
            ember_by_level.setdefault(level[n], []).append(n)
    steps = []
    for lv in range(max(list(ember_by_level) + list(torch_by_level) + [0]) + 1):
        if ember_by_level.get(lv):
            steps.append(("ember", _Segment(lv, ember_by_level[lv])))
        steps += [("torch", n) for n in torch_by_level.get(lv, [])]
    return steps


def _wire(steps, ep):
    """Fill each segment's inputs/outputs from who reads what."""
    seg_of = {n: s for kind, s in steps if kind == "ember" for n in s.nodes}
    for kind, s in steps:
        if kind != "ember":
            continue
        ins = []
        for n in s.nodes:
            for a in _tensor_deps(n):
                if seg_of.get(a) is not s and a not in ins:
                    ins.append(a)
        s.inputs, s.outputs = ins, []
    for n, s in seg_of.items():
        if any(u.op == "output" or (not _is_sized(u) and seg_of.get(u) is not s) for u in n.users):
            s.outputs.append(n)


def _tensor_deps(n) -> list:
    """The non-size nodes ``n`` reads, looking through size arithmetic (it has no step)."""
    out, todo, seen = [], list(n.all_input_nodes), set()
    while todo:
        a = todo.pop()
        if a in seen:
            continue
        seen.add(a)
        if a.op == "call_function" and _is_sized(a):
            continue  # rebuilt from its symbolic value inside the segment
        out.append(a)
    return out


def _size_deps(nodes) -> list:
    """Size-arithmetic nodes the given nodes read (transitively), in graph order."""
    found, todo = set(), [a for n in nodes for a in n.all_input_nodes]
    while todo:
        a = todo.pop()
        if a in found or not (a.op == "call_function" and _is_sized(a)):
            continue
        found.add(a)
        todo += a.all_input_nodes
    return list(found)


def _segment_graph(s: _Segment, ctx: dict, params: dict, k: int):
    """Import one segment with the frontend's converters; returns (graph, failed nodes)."""
    import torch

    from .frontends.torch import _POISON, Importer, Unsupported, _ident, add_const, ember_dtype
    from .frontends.torch_ops import CONVERTERS
    from .ir.graph import Graph, TensorType
    from .ir.symbolic import SymExpr

    g = Graph(f"segment{k}")
    s.feeds, s.carriers, s.aliases = [], [], {}
    cx = Importer(types.SimpleNamespace(graph=types.SimpleNamespace(nodes=[])), g,
                  ctx["sym_names"], ctx["hints"])
    bound: set[str] = set()
    bad_in: set = set()
    for a in s.inputs:
        if a in params:
            t = params[a].detach()
            cx.env[a] = add_const(g, (t.float() if t.dtype == torch.bfloat16 else t).cpu().numpy(),
                                  _ident(a.name), ember_dtype(t.dtype))
            continue
        val = a.meta.get("val")
        try:
            if not isinstance(val, torch.Tensor):
                raise Unsupported("not a tensor")
            shape = tuple(cx.dim(d) for d in val.shape)
            cx.env[a] = g.add_input(_ident(a.name), TensorType(ember_dtype(val.dtype), shape))
            s.feeds.append(a)
        except Unsupported:  # complex results, lists, sizes known only at run time
            bad_in.add(a)
            continue
        bound |= {str(d) for d in shape if isinstance(d, SymExpr) and str(d) in d.free_symbols}
    # the sizes the segment's nodes need come from their symbolic metadata
    order = {n: i for i, n in enumerate(s.nodes[0].graph.nodes)}
    need = sorted(_size_deps(s.nodes) + list(s.nodes), key=order.__getitem__)
    cx.ep = types.SimpleNamespace(graph=types.SimpleNamespace(nodes=need))
    if bad_in:  # their readers run in PyTorch
        return None, [n for n in s.nodes if any(a in bad_in for a in _tensor_deps(n))]
    cx.env = _Env(cx.env)  # anything read from outside the segment and not wired: unsupported
    cx.convert(CONVERTERS)
    failed = [n for n in s.nodes if not _is_sized(n) and cx.env.get(n, _POISON) is _POISON]
    if failed:
        return None, failed
    outs = []
    for n in s.outputs:
        v = cx.env[n]
        if not hasattr(v, "kind") or v.kind != "node":
            # an identity result (clone of an input) or a constant: no kernel needed
            src = next((a for a in s.inputs if cx.env.get(a) is v), None)
            if src is None and hasattr(v, "kind") and v.kind == "const":
                s.aliases[n] = ("const", torch.from_numpy(np.array(v.data)))
                continue
            if src is not None:
                s.aliases[n] = ("node", src)
                continue
            return None, [n]
        outs.append(n)
    s.outputs = outs
    g.outputs = [cx.env[n] for n in outs]
    g.output_names = [_ident(n.name) for n in outs]
    # symbols no input binds directly (only as 2*seq...) ride along as empty [n] inputs
    free: set[str] = set()
    for v in list(g.inputs) + list(g.outputs):
        for d in v.shape:
            if isinstance(d, SymExpr):
                free |= set(d.free_symbols)
    for nd in g.nodes:
        for o in nd.outputs:
            for d in o.shape:
                if isinstance(d, SymExpr):
                    free |= set(d.free_symbols)
    from .ir import dtypes
    from .ir.symbolic import sym
    for name in sorted(free - bound):
        g.add_input(f"dim_{name}", TensorType(dtypes.u8, (sym(name),)))
        s.carriers.append(name)
    g.sym_ranges = {k2: r for k2, r in ctx["sym_ranges"].items() if k2 in free}
    return g, []


class _Env(dict):
    def __missing__(self, key):
        from .frontends.torch import _POISON
        return _POISON


class FallbackModel:
    """Ember segments and PyTorch ops, run in order; called like the original model."""

    def __init__(self, ep, steps, ctx, params, unsupported_ops):
        self.ep, self.steps, self.params = ep, steps, params
        self.input_names = list(ctx["input_names"])
        self.unsupported_ops = unsupported_ops
        self.segments = [s for k, s in steps if k == "ember"]
        self._user = [n for n in ep.graph.nodes if n.op == "placeholder" and n not in params]
        self._out = next(n for n in ep.graph.nodes if n.op == "output")
        from torch.export.graph_signature import OutputKind
        self._user_out = [i for i, sp in enumerate(ep.graph_signature.output_specs)
                          if sp.kind == OutputKind.USER_OUTPUT]
        self._sym_names = dict(ctx["sym_names"])
        # which input dim gives each symbol's value at run time
        self._sym_src: dict[str, tuple[int, int]] = {}
        for i, n in enumerate(self._user):
            v = n.meta.get("val")
            for ax, d in enumerate(getattr(v, "shape", ())):
                e = getattr(getattr(d, "node", None), "expr", None)
                if e is not None and getattr(e, "is_Symbol", False) and e.name in ctx["sym_names"]:
                    self._sym_src.setdefault(ctx["sym_names"][e.name], (i, ax))

    def _value(self, n, env, symvals):
        """A node's run-time value; sizes from the symbols' values (or run where unknown)."""
        if n in env:
            return env[n]
        v = n.meta.get("val")
        e = getattr(getattr(v, "node", None), "expr", None)
        if e is not None:
            subs = {s: symvals[self._sym_names[s.name]] for s in e.free_symbols
                    if self._sym_names.get(s.name) in symvals}
            if len(subs) == len(e.free_symbols):
                r = e.subs(subs)
                env[n] = int(r) if r.is_Integer else bool(r) if r.is_Boolean else float(r)
                return env[n]
        elif isinstance(v, (int, float, bool)):
            return v
        a, kw = __import__("torch").fx.node.map_arg((n.args, n.kwargs),
                                                    lambda m: self._value(m, env, symvals))
        env[n] = n.target(*a, **kw)
        return env[n]

    @property
    def graph(self):
        return self.segments[0].compiled.graph if self.segments else None

    def _gather(self, args, kwargs):
        from .api import gather_inputs
        return gather_inputs(self.input_names, args, kwargs)

    def __call__(self, *args, **kwargs):
        import torch
        import torch.utils._pytree as pytree
        vals = self._gather(args, kwargs)
        as_numpy = not any(isinstance(v, torch.Tensor) for v in vals)
        vals = [v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)) for v in vals]
        if len(vals) != len(self._user):
            raise InputError(f"model takes {len(self._user)} tensor inputs, got {len(vals)}")
        env = dict(self.params)
        env.update(zip(self._user, vals))
        symvals = {s: int(vals[i].shape[ax]) for s, (i, ax) in self._sym_src.items()}
        with torch.no_grad():
            for kind, step in self.steps:
                if kind == "torch":
                    a, kw = torch.fx.node.map_arg((step.args, step.kwargs),
                                                  lambda n: self._value(n, env, symvals))
                    env[step] = step.target(*a, **kw)
                    continue
                ins = [env[n] for n in step.feeds]
                ins += [torch.empty(symvals[c], dtype=torch.uint8) for c in step.carriers]
                outs = step.compiled.native.run_torch(ins)
                env.update(zip(step.outputs, outs))
                for n, (how, src) in step.aliases.items():
                    env[n] = env[src] if how == "node" else src
        flat = [env[a] if isinstance(a, torch.fx.Node) else a for a in self._out.args[0]]
        flat = [flat[i] for i in self._user_out]
        if as_numpy:
            flat = [f.numpy() if isinstance(f, torch.Tensor) else f for f in flat]
            return flat[0] if len(flat) == 1 else tuple(flat)
        out_spec = self.ep.call_spec.out_spec
        return pytree.tree_unflatten(flat, out_spec)

    def __repr__(self):
        return (f"<ember.FallbackModel {len(self.segments)} Ember segment(s), "
                f"PyTorch ops: {', '.join(self.unsupported_ops)}>")


def compile_with_fallback(model, example_inputs, dynamic, error: UnsupportedOpError, *,
                          opt_level: int = 2, verify=None, threads: int | None = None):
    """Compile ``model`` with the ops in ``error`` (and anything that depends on how they
    behave at run time) running through PyTorch. Warns once, listing those ops."""
    from torch.export.graph_signature import InputKind

    from . import api

    ctx = getattr(error, "torch_context", None)
    if ctx is None:
        raise error  # not a torch.export program (ONNX...): nothing to split
    ep = ctx["ep"]
    nodes = {n.name: n for n in ep.graph.nodes}
    torch_nodes = {nodes[u["node"]] for u in error.unsupported if u["node"] in nodes
                   and nodes[u["node"]].op == "call_function"}
    if len(torch_nodes) != len(error.unsupported):
        # unsupported inputs, constants or state updates: not a matter of single ops
        raise error
    params = {}
    for spec in ep.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            continue
        t = ep.state_dict[spec.target] if spec.target in ep.state_dict else ep.constants[spec.target]
        params[nodes[spec.arg.name]] = t
    for _ in range(len(nodes)):  # each round moves at least one node to PyTorch
        steps = _partition(ep, torch_nodes)
        _wire(steps, ep)
        failed = []
        for k, (kind, s) in enumerate(steps):
            if kind != "ember":
                continue
            g, bad = _segment_graph(s, ctx, params, k)
            if bad:
                failed += bad
                continue
            s.graph = g
        if not failed:
            break
        torch_nodes |= set(failed)
    ops = sorted({_name(n) for n in torch_nodes})
    warnings.warn(f"Ember could not compile {len(torch_nodes)} op node(s) of "
                  f"{type(model).__name__} and runs them with PyTorch: {', '.join(ops)}. "
                  f"The rest is compiled; results are exact but those ops run at PyTorch speed.",
                  FallbackWarning, stacklevel=3)
    for kind, s in steps:
        if kind == "ember":
            s.compiled = api.compile(s.graph, None, opt_level=opt_level, verify=verify,
                                     threads=threads)
    return FallbackModel(ep, steps, ctx, params, ops)


def _name(n) -> str:
    from .frontends.torch import target_name
    return target_name(n.target)
