"""PyTorch frontend: ``torch.export`` -> core ATen -> Ember graph.

    graph = from_torch(model, (x,), dynamic={"x": {0: "batch"}})

The exported program is decomposed to core ATen, then each FX node is translated by the
converter table in ``torch_ops.py``. Parameters, buffers and lifted constants become graph
constants; sizes that torch tracks symbolically (``SymInt``) become Ember ``SymExpr`` dims.
"""
from __future__ import annotations

import inspect
import os
import re
import warnings
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree
from torch.export.graph_signature import ConstantArgument, InputKind, OutputKind

from .. import errors
from ..ir import dtypes
from ..ir.graph import Graph, TensorType, Value
from ..ir.symbolic import SymExpr, evaluate, floordiv, mod, sym
from ..passes.dce import eliminate_dead_code

__all__ = ["from_torch"]

INT_MAX = 2**31 - 1  # upper bound recorded for a dynamic dim torch leaves unbounded

TORCH_DTYPES = {torch.float32: dtypes.f32, torch.float64: dtypes.f64, torch.float16: dtypes.f16,
                torch.bfloat16: dtypes.bf16, torch.int64: dtypes.i64, torch.int32: dtypes.i32,
                torch.int16: dtypes.i16, torch.int8: dtypes.i8, torch.uint8: dtypes.u8,
                torch.bool: dtypes.bool_}
EMBER_TO_TORCH = {v: k for k, v in TORCH_DTYPES.items()}
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep


class Unsupported(Exception):
    """Raised by a converter for a variant of an op Ember cannot express (reported, not fatal)."""


_POISON = object()  # value of a node downstream of an unsupported one


def ember_dtype(dt) -> dtypes.DType:
    try:
        return TORCH_DTYPES[dt]
    except KeyError:
        raise Unsupported(f"dtype {dt} has no Ember equivalent") from None


def target_name(t) -> str:
    """'aten.add.Tensor' for ATen overloads, 'operator.getitem' for Python functions."""
    if isinstance(t, torch._ops.OpOverload):
        return str(t)
    mod_name = getattr(t, "__module__", None) or ""
    return f"{mod_name.lstrip('_')}.{getattr(t, '__name__', str(t))}"


def source_of(node) -> str | None:
    """'model.py:42 in forward: x = self.fc(x)': the innermost frame outside torch itself."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)\n[ \t]*([^\n]*)',
                        node.meta.get("stack_trace") or "")
    user = [f for f in frames if not f[0].startswith(_TORCH_DIR)]
    stack = node.meta.get("nn_module_stack") or {}
    mod = ""
    if stack:
        path, cls = list(stack.values())[-1][:2]
        cls = cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))
        if path:
            mod = f" [{path}: {cls.rsplit('.', 1)[-1]}]"
    if not frames:
        return mod.strip(" []") or None
    file, line, fn, code = (user or frames)[-1]
    code = code.strip()
    code = code if len(code) <= 80 else code[:77] + "..."
    # a frame inside torch (nn.Linear's forward) says little alone: name the module too
    return f"{os.path.basename(file)}:{line} in {fn}: {code}" + ("" if user else mod)


def add_const(g: Graph, data: np.ndarray, name: str, dt: dtypes.DType | None = None) -> Value:
    """Graph.add_const, keeping 0-d data 0-d (np.ascontiguousarray there makes it 1-d)."""
    if data.ndim:
        return g.add_const(data, name, dt)
    dt = dt or dtypes.from_numpy(data.dtype)
    v = Value(g.fresh_name(name), TensorType(dt, ()), "const", data=np.array(data, dtype=dt.np))
    g.constants.append(v)
    return v


def _ident(name: str) -> str:
    name = re.sub(r"\W", "_", name)
    return name if name[:1].isalpha() or name[:1] == "_" else "p_" + name


class Importer:
    """Translation state for one exported program; converters call its helpers."""

    def __init__(self, ep, graph: Graph, sym_names: dict[str, str], hints: dict[str, int]):
        self.ep, self.g = ep, graph
        self.sym_names = sym_names      # torch symbol (s31) -> Ember symbol (batch)
        self.hints = hints              # Ember symbol -> size in the example inputs
        self.env: dict[Any, Any] = {}
        self.node = None                # FX node being converted
        self.source: str | None = None  # its source line
        self._scalars: dict = {}

    # -- sizes
    def dim(self, d):
        """An int, SymInt or sympy expression as an Ember Dim."""
        if isinstance(d, torch.SymInt):
            d = d.node.expr
        if isinstance(d, (int, np.integer)):
            return int(d)
        if isinstance(d, SymExpr):
            return d
        return self._sympy(d)

    def _sympy(self, e):
        import sympy
        if e.is_Integer:
            return int(e)
        if e.is_Symbol:
            if e.name not in self.sym_names:
                raise Unsupported(f"size {e} is not derived from an input dim (data-dependent?)")
            return sym(self.sym_names[e.name])
        args = [self._sympy(a) for a in e.args]
        kind = type(e).__name__
        if isinstance(e, sympy.Add):
            return sum(args[1:], args[0])
        if isinstance(e, sympy.Mul):
            out = args[0]
            for a in args[1:]:
                out = out * a
            return out
        if isinstance(e, sympy.Pow) and isinstance(args[1], int) and args[1] > 0:
            out = 1
            for _ in range(args[1]):
                out = out * args[0]
            return out
        if kind in ("FloorDiv", "CleanDiv"):
            return floordiv(args[0], args[1])
        if kind in ("Mod", "PythonMod"):
            return mod(args[0], args[1])
        raise Unsupported(f"symbolic size {e} ({kind}) has no Ember form")

    def hint(self, d) -> int:
        """Value of a Dim at the example inputs (torch guards on the same facts)."""
        return evaluate(d, self.hints)

    def meta(self, i: int | None = None):
        v = self.node.meta.get("val")
        return v[i] if i is not None else v

    def out_dtype(self, i: int | None = None) -> dtypes.DType:
        v = self.meta(i)
        if isinstance(v, (list, tuple)):
            v = v[0]
        return ember_dtype(v.dtype)

    def out_shape(self, i: int | None = None) -> tuple:
        v = self.meta(i)
        if isinstance(v, (list, tuple)):
            v = v[0]
        return tuple(self.dim(d) for d in v.shape)

    # -- building
    def op(self, name: str, inputs, attrs: dict | None = None):
        return self.g.op(name, list(inputs), attrs or {}, source=self.source)

    def const(self, value, dtype: dtypes.DType) -> Value:
        """A 0-d constant (Python scalars), shared between uses."""
        key = (dtype.name, repr(value))
        if key not in self._scalars:
            self._scalars[key] = add_const(self.g, np.array(value, dtype=dtype.np), "c", dtype)
        return self._scalars[key]

    def dim_tensor(self, d, dtype=dtypes.i64) -> Value:
        """A 0-d tensor holding a (symbolic) size: arange(d, d + 1) read as a scalar."""
        if isinstance(d, int):
            return self.const(d, dtype)
        r = self.op("arange", [], {"start": d, "end": d + 1, "step": 1, "dtype": dtypes.i64})
        return self.cast(self.op("reshape", [r], {"shape": ()}), dtype)

    def cast(self, v: Value, dt: dtypes.DType) -> Value:
        return v if v.dtype is dt else self.op("cast", [v], {"dtype": dt})

    def value(self, v, dt: dtypes.DType) -> Value:
        """``v`` (Value, Python scalar or size) as a Value of dtype ``dt``."""
        if isinstance(v, Value):
            return self.cast(v, dt)
        if isinstance(v, SymExpr):
            return self.dim_tensor(v, dt)
        if v is None:
            raise Unsupported("missing operand")
        return self.const(v, dt)

    def result_type(self, a, b) -> dtypes.DType:
        """torch's type promotion for two operands (0-d tensors and scalars rank lower)."""
        def proxy(v):
            if isinstance(v, Value):
                return torch.empty(() if v.type.rank == 0 else (1,), dtype=EMBER_TO_TORCH[v.dtype])
            return 1 if isinstance(v, SymExpr) else v
        return ember_dtype(torch.result_type(proxy(a), proxy(b)))

    # -- driver
    def convert(self, converters) -> list[dict]:
        """Translate every call node; return the unsupported ones (all of them, not the first)."""
        bad: list[dict] = []
        for node in self.ep.graph.nodes:
            if node.op in ("placeholder", "output"):
                continue
            self.node, self.source = node, source_of(node)
            name = target_name(node.target) if node.op == "call_function" else node.op
            val = node.meta.get("val")
            if node.op == "call_function" and isinstance(val, (torch.SymInt, int)) \
                    and not isinstance(val, bool) and name != "operator.getitem":
                try:  # size arithmetic (sym_size, operator.mul, ...): torch already solved it
                    self.env[node] = self.dim(val)
                except Unsupported as e:
                    self.env[node] = _POISON
                    bad.append(self._report(name, e))
                continue
            if isinstance(val, (torch.SymBool, torch.SymFloat, bool, float)) and name not in converters:
                self.env[node] = None  # only feeds runtime asserts, which Ember's guards replace
                continue
            if node.op != "call_function" or name not in converters:
                self.env[node] = _POISON
                bad.append(self._report(name))
                continue
            args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: self.env[n])
            if any(a is _POISON for a in pytree.tree_leaves((args, kwargs))):
                self.env[node] = _POISON  # downstream of an op already reported
                continue
            try:
                self.env[node] = self._check(converters[name](self, *args, **kwargs))
            except (Unsupported, errors.EmberError) as e:
                self.env[node] = _POISON
                bad.append(self._report(name, e))
            except Exception as e:  # a converter bug: still report every node, then fail clearly
                self.env[node] = _POISON
                bad.append(self._report(name, f"internal error in Ember's converter: "
                                              f"{type(e).__name__}: {e}"))
        return bad

    def _report(self, op, reason=None) -> dict:
        r = {"op": op, "node": self.node.name, "source": self.source}
        if reason is not None:
            r["reason"] = str(reason)
        return r

    def _check(self, out):
        """Match torch's own dtype for each result and catch shape disagreements early."""
        val = self.node.meta.get("val")
        if isinstance(out, Value) and isinstance(val, torch.Tensor):
            want = ember_dtype(val.dtype)
            if len(out.shape) != val.dim():
                raise Unsupported(f"internal: rank {len(out.shape)} != torch's {val.dim()}")
            for a, b in zip(out.shape, val.shape):
                if isinstance(a, int) and isinstance(b, int) and a != b:
                    raise Unsupported(f"internal: shape {out.type} != torch's {list(val.shape)}")
            return self.cast(out, want)
        return out


def _flat_input_names(model, in_spec) -> list[tuple[str, bool]]:
    """(name, is_kwarg) for each leaf of the exported input spec, from forward()'s signature."""
    try:
        params = [p.name for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    leaves = pytree.tree_unflatten(list(range(in_spec.num_leaves)), in_spec)
    out = []
    for path, _ in pytree.tree_flatten_with_path(leaves)[0]:
        parts = [_key(k) for k in path]
        is_kw = parts[0] == "1"
        top = parts[1] if is_kw else (params[int(parts[1])] if int(parts[1]) < len(params)
                                      else f"arg{parts[1]}")
        out.append((_ident("_".join([top] + parts[2:])), is_kw))
    return out


def _key(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _output_names(out_spec, n: int) -> list[str]:
    try:
        tree = pytree.tree_unflatten(list(range(n)), out_spec)
        paths = [p for p, _ in pytree.tree_flatten_with_path(tree)[0]]
    except Exception:  # an output class that cannot be rebuilt from ints: plain names
        return [f"output{i}" for i in range(n)]
    names = []
    for i, p in enumerate(paths):
        s = _ident("_".join(_key(k) for k in p)) if p else "output0"
        s = "output" + s if not s[:1].isalpha() else s
        names.append(s if s not in names else f"output{i}")
    return names


def _export(model, args, kwargs, dynamic):
    # torch.export deep-copies pytree specs through a deprecated path; that warning is torch's
    # own business and would otherwise greet the user at every compile
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)",
                                category=FutureWarning)
        return _export_quiet(model, args, kwargs, dynamic)


def _export_quiet(model, args, kwargs, dynamic):
    """torch.export + core ATen decompositions; torch's failures become ExportError."""
    dims: dict[str, Any] = {}
    unbounded: set[str] = set()  # symbols the user gave no range for
    shapes = None
    if dynamic:
        try:
            bound = inspect.signature(model.forward).bind(*args, **kwargs).arguments
        except TypeError as e:
            raise errors.InputError(f"example inputs do not match {type(model).__name__}.forward: {e}")
        shapes = {}
        for name, spec in dynamic.items():
            t = bound.get(name)
            if not isinstance(t, torch.Tensor):
                raise errors.InputError(f"dynamic names input {name!r}, but the tensor inputs are "
                                        f"{[k for k, v in bound.items() if isinstance(v, torch.Tensor)]}")
            shapes[name] = {}
            for axis, s in spec.items():
                sname, lo, hi = (s, None, None) if isinstance(s, str) else (tuple(s) + (None, None))[:3]
                axis = int(axis) % t.dim()
                if t.shape[axis] < 2:
                    raise errors.ExportError(
                        f"input {name!r} dim {axis} is marked dynamic ({sname!r}) but has size "
                        f"{t.shape[axis]} in the example: torch.export specializes sizes 0 and 1 to "
                        f"constants. Use an example input with size >= 2 there; the compiled graph "
                        f"still accepts size 1 at run time.")
                if lo is None and hi is None:
                    unbounded.add(sname)
                if sname not in dims:
                    dims[sname] = torch.export.Dim(sname, min=1 if lo is None else lo,
                                                   **({} if hi is None else {"max": hi}))
                shapes[name][axis] = dims[sname]
        shapes = {k: shapes.get(k) for k, v in bound.items() if k in shapes or isinstance(v, torch.Tensor)}
    try:
        for attempt in range(3):
            try:
                ep = torch.export.export(model, tuple(args), dict(kwargs), dynamic_shapes=shapes)
                break
            except torch._dynamo.exc.UserError as e:
                # a dim declared without a range that the model bounds (BERT: seq <= 512
                # position embeddings) takes the range torch suggests; explicit ranges stay errors
                fixes = re.findall(r"^\s*(\w+) = Dim\('\w+',?(.*)\)$",
                                   str(e).split("Suggested fixes:")[-1], re.M)
                n_fix = len(re.findall(r"^\s*\w+ = ", str(e).split("Suggested fixes:")[-1], re.M))
                if attempt == 2 or not fixes or len(fixes) != n_fix or \
                        not all(n in unbounded for n, _ in fixes):
                    raise
                for n, rng in fixes:
                    b = dict(re.findall(r"(min|max)=(\d+)", rng))
                    dims[n] = torch.export.Dim(n, min=int(b.get("min", 1)),
                                               **({"max": int(b["max"])} if "max" in b else {}))
                shapes = {k: v and {a: dims[d.__name__] for a, d in v.items()} for k, v in shapes.items()}
    except Exception as e:
        raise _export_error(model, e) from e
    try:
        return ep.run_decompositions()
    except Exception:
        # torch's re-trace can fail on graphs that export fine (GPT-2: a view of a transposed
        # tensor); the undecomposed graph is still ATen, and the op table covers its common ops
        return ep


def _export_error(model, e: Exception) -> errors.ExportError:
    """torch's message, plus what to change in the model or the call."""
    msg = str(e).strip()
    hint = ("Make forward() traceable: no Python control flow on tensor values (use torch.where "
            "or torch.cond), no .item()/.tolist(), no data-dependent shapes.")
    if "Cache" in msg and "not a known type" in msg:
        hint = ("The model returns a KV cache object: export it with use_cache=False "
                "(set model.config.use_cache = False or pass use_cache=False in the example kwargs).")
    elif "Constraints violated" in msg or "specialized" in msg:
        hint = ("A dim marked dynamic is forced to one size or range by the model; follow torch's "
                "suggested fix above (e.g. declare the range as (name, min, max)) or drop it "
                "from `dynamic`.")
    return errors.ExportError(f"torch.export failed for {type(model).__name__}: "
                              f"{type(e).__name__}: {msg[:2000]}\nHint: {hint}")


def from_torch(model: torch.nn.Module, example_inputs, dynamic: dict | None = None) -> Graph:
    """Import ``model`` as an Ember Graph.

    ``example_inputs`` is a tuple/list of positional arguments, a dict of keyword arguments, or
    one tensor. ``dynamic`` maps an input name to ``{dim: "symbol"}`` or
    ``{dim: ("symbol", min, max)}``; one symbol name is one size across inputs.
    Raises ExportError when torch cannot export the model and UnsupportedOpError listing every
    op Ember cannot translate.
    """
    from .torch_ops import CONVERTERS

    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if isinstance(example_inputs, dict):
        args, kwargs = (), dict(example_inputs)
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    else:
        raise errors.InputError("example_inputs must be a tensor, a tuple/list of positional "
                                f"arguments or a dict of keyword arguments, got {type(example_inputs).__name__}")
    model = model.eval()
    ep = _export(model, args, kwargs, dynamic)

    g = Graph("main")
    g.meta["model_class"] = type(model).__qualname__
    user_specs = [s for s in ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    names = _flat_input_names(model, ep.call_spec.in_spec)
    flat_examples = pytree.tree_leaves((args, kwargs))
    if len(names) != len(user_specs) or len(flat_examples) != len(user_specs):
        names = [(s.arg.name, False) for s in user_specs]
        flat_examples = [None] * len(user_specs)
    nodes = {n.name: n for n in ep.graph.nodes}

    # symbols: each dynamic input dim is a bare torch symbol; name it as the user did
    sym_names, hints, want = {}, {}, {}
    for (name, _), spec in zip(names, user_specs):
        for axis, s in (dynamic or {}).get(name, {}).items():
            want[(name, int(axis))] = s if isinstance(s, str) else s[0]
    for (name, _), spec, ex in zip(names, user_specs, flat_examples):
        val = nodes[spec.arg.name].meta.get("val") if hasattr(spec.arg, "name") else None
        if not isinstance(val, torch.Tensor):
            continue
        for axis, d in enumerate(val.shape):
            if isinstance(d, torch.SymInt) and d.node.expr.is_Symbol:
                tname = d.node.expr.name
                sname = want.get((name, axis)) or want.get((name, axis - val.dim())) or tname
                sym_names.setdefault(tname, sname)
                if ex is not None:
                    hints[sym_names[tname]] = int(ex.shape[axis])
                else:
                    hints[sym_names[tname]] = int(d.node.hint)
    cx = Importer(ep, g, sym_names, hints)
    for s, r in ep.range_constraints.items():
        if getattr(s, "name", None) in sym_names:
            lo, hi = r.lower, r.upper
            lo = max(1, int(lo)) if getattr(lo, "is_Integer", False) else 1
            hi = min(int(hi), INT_MAX) if getattr(hi, "is_Integer", False) else INT_MAX
            g.sym_ranges[sym_names[s.name]] = (lo, hi)

    bad: list[dict] = []
    # user inputs first (graph order = forward order), then weights
    kwarg_inputs: list[str] = []
    for (name, is_kw), spec in zip(names, user_specs):
        node = nodes[spec.arg.name]
        if isinstance(spec.arg, ConstantArgument):  # an int/bool/None argument torch baked in
            cx.env[node] = spec.arg.value
            continue
        val = node.meta.get("val")
        try:
            if not isinstance(val, torch.Tensor):
                raise Unsupported(f"input {name!r} is a {type(val).__name__}, not a tensor")
            cx.env[node] = g.add_input(name, TensorType(ember_dtype(val.dtype),
                                                        tuple(cx.dim(d) for d in val.shape)))
            if is_kw:
                kwarg_inputs.append(cx.env[node].name)
        except Unsupported as e:
            cx.env[node] = _POISON
            bad.append({"op": "input", "node": name, "source": None, "reason": str(e)})
    seen: dict = {}
    for spec in ep.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            continue
        node = nodes[spec.arg.name]
        if spec.kind not in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            cx.env[node] = _POISON
            bad.append({"op": f"input kind {spec.kind.name}", "node": node.name, "source": None})
            continue
        t = ep.state_dict[spec.target] if spec.target in ep.state_dict else ep.constants[spec.target]
        t = t.detach()
        # shared parameters (tied weights) and identical views import once
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if key not in seen:
            try:
                dt = ember_dtype(t.dtype)
            except Unsupported as e:
                cx.env[node] = _POISON
                bad.append({"op": "constant", "node": spec.target, "source": None, "reason": str(e)})
                continue
            data = (t.float() if t.dtype == torch.bfloat16 else t).cpu().numpy()
            seen[key] = add_const(g, data, _ident(spec.target), dt)
        cx.env[node] = seen[key]

    bad += cx.convert(CONVERTERS)

    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    outs = []
    for spec, arg in zip(ep.graph_signature.output_specs, out_node.args[0]):
        if spec.kind != OutputKind.USER_OUTPUT:
            bad.append({"op": f"output kind {spec.kind.name} (the model mutates state)",
                        "node": getattr(arg, "name", str(arg)), "source": None})
            continue
        v = cx.env[arg] if isinstance(arg, torch.fx.Node) else arg
        if v is _POISON:
            continue
        if not isinstance(v, Value):
            if v is None or isinstance(v, SymExpr):
                bad.append({"op": "output", "node": str(arg), "source": None,
                            "reason": f"output {v!r} is not a tensor"})
                continue
            v = add_const(g, np.array(v), "output_const")
        outs.append(v)
    if bad:
        err = _unsupported(bad)
        # what ember.fallback needs to split the program instead of exporting it again
        err.torch_context = {"ep": ep, "sym_names": sym_names, "hints": hints,
                             "sym_ranges": dict(g.sym_ranges), "input_names": [n for n, _ in names],
                             "user_specs": user_specs}
        raise err
    g.outputs = outs
    g.output_names = _output_names(ep.call_spec.out_spec, len(outs))
    g.meta["torch_out_spec"] = ep.call_spec.out_spec
    g.meta["torch_in_spec"] = ep.call_spec.in_spec
    g.meta["input_names"] = [v.name for v in g.inputs]
    g.meta["kwarg_inputs"] = kwarg_inputs
    # converters may build spare results (the mean/rstd of native_layer_norm) or leave a
    # transpose that `linear` made unnecessary: drop what nothing reads
    eliminate_dead_code(g)
    return g


def _unsupported(bad: list[dict]) -> errors.UnsupportedOpError:
    """The error listing every unsupported node, plus why for variants of known ops."""
    e = errors.UnsupportedOpError(bad)
    why = [f"  - {b['node']}: {b['reason']}" for b in bad if b.get("reason")]
    if why:
        e.args = (e.args[0] + "\nDetails:\n" + "\n".join(why),)
    return e

