"""ONNX frontend: an ``onnx.ModelProto`` (or a path, or its bytes) -> Ember graph.

    graph = from_onnx("model.onnx")                       # dims named by dim_param are dynamic
    graph = from_onnx(model_proto, dynamic={"x": {0: "batch"}})

Each ONNX node is translated by the converter table in ``onnx_ops.py`` (one small function per
ONNX op type). Initializers become graph constants. Types are inferred by Ember itself: every
converter builds Ember ops whose inference rules give the result types, so ONNX's own shape
inference is never needed (nor trusted).

Shape computations (``Shape -> Gather -> Concat -> Reshape``, as exporters write them) are
evaluated while importing: a node whose inputs are all constants is computed at once with
the op's numpy reference, and integer tensors that hold symbolic sizes are tracked as
``Known`` values (numpy object arrays of ints and ``SymExpr``), so a ``Reshape`` to
``[batch, seq, 12, 64]`` gets symbolic target dims. A ``Known`` is only turned into a runtime
tensor when something other than shape arithmetic consumes it.

Ops with no converter but an ONNX function body (Celu, LayerNormalization, Mish, ...) are
expanded into that body. Whatever remains unsupported is reported all at once in one
``UnsupportedOpError``.

``EmberBackend`` at the bottom implements ``onnx.backend.base.Backend`` so that ONNX's own
backend test suite runs against Ember (see tests/frontends/test_onnx_node_suite.py).
"""
from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from .. import errors
from ..errors import EmberError, UnsupportedOpError
from ..ir import dtypes
from ..ir.graph import Graph, TensorType, Value
from ..ir.symbolic import SymExpr, sym

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ModuleNotFoundError as _e:  # pragma: no cover - api.import_model reports this
    raise

__all__ = ["from_onnx", "load_onnx", "EmberBackend", "EmberBackendRep"]

INT_MAX = 2**31 - 1

ONNX_DTYPES = {TensorProto.FLOAT: dtypes.f32, TensorProto.DOUBLE: dtypes.f64,
               TensorProto.FLOAT16: dtypes.f16, TensorProto.BFLOAT16: dtypes.bf16,
               TensorProto.INT64: dtypes.i64, TensorProto.INT32: dtypes.i32,
               TensorProto.INT16: dtypes.i16, TensorProto.INT8: dtypes.i8,
               TensorProto.UINT8: dtypes.u8, TensorProto.BOOL: dtypes.bool_,
               TensorProto.UINT16: dtypes.u16, TensorProto.UINT32: dtypes.u32, TensorProto.UINT64: dtypes.u64}
EMBER_TO_ONNX = {v: k for k, v in ONNX_DTYPES.items()}
_DOMAINS = ("", "ai.onnx")


class Unsupported(Exception):
    """Raised by a converter for a variant of an op Ember cannot express (reported, not fatal)."""


class NeedsConstant(Unsupported):
    """An input that Ember needs at compile time (a shape, axes, pads...) is computed at run time.

    ``inputs`` names the graph inputs it depends on, so that a caller that knows their values
    (the ONNX backend, at run time) can bind them and import again.
    """

    def __init__(self, msg: str, inputs: set[str]):
        super().__init__(msg)
        self.inputs = inputs


_POISON = object()  # value downstream of an unsupported node


def onnx_dtype(code: int) -> dtypes.DType:
    try:
        return ONNX_DTYPES[code]
    except KeyError:
        name = TensorProto.DataType.Name(code) if code in TensorProto.DataType.values() else code
        raise Unsupported(f"element type {name} has no Ember equivalent") from None


def ident(name: str, prefix: str = "v") -> str:
    """An ONNX name as a C/Python identifier: 'input.1' -> 'input_1', '0' -> 'v_0'."""
    s = re.sub(r"\W", "_", name)
    return s if s[:1].isalpha() or s[:1] == "_" else f"{prefix}_{s}"


class Known:
    """An integer tensor whose elements are known at import time but some are symbolic.

    ``data`` is a numpy object array of ints and ``SymExpr`` (e.g. the result of ``Shape``
    on an input with dim ``batch``); ``dtype`` is the ONNX-side Ember dtype it stands for.
    """
    __slots__ = ("data", "dtype", "value")

    def __init__(self, data: np.ndarray, dtype: dtypes.DType):
        self.data, self.dtype, self.value = data, dtype, None

    @property
    def shape(self):
        return self.data.shape


# ---------------------------------------------------------------- loading

def load_onnx(src) -> "onnx.ModelProto":
    """A ModelProto from a ModelProto, a path or serialized bytes; OnnxError if unreadable.

    >>> model = load_onnx("model.onnx")
    """
    if isinstance(src, onnx.ModelProto):
        return src
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _parse(bytes(src), "the given bytes", None)
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.isfile(path):
            raise errors.OnnxError(f"ONNX file {path!r} does not exist")
        with open(path, "rb") as f:
            data = f.read()
        return _parse(data, path, os.path.dirname(os.path.abspath(path)))
    raise errors.OnnxError(f"cannot read an ONNX model from a {type(src).__name__}: pass a path, "
                           f"bytes or onnx.ModelProto")


def _parse(data: bytes, where: str, base_dir: str | None):
    from google.protobuf.message import DecodeError
    m = onnx.ModelProto()
    try:
        m.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise errors.OnnxError(f"{where} is not a valid ONNX model (protobuf parse failed: {e}); "
                               f"is the file truncated or not ONNX?") from None
    if not m.HasField("graph") or (not m.graph.node and not m.graph.output):
        raise errors.OnnxError(f"{where} holds no ONNX graph (empty, truncated or not an ONNX "
                               f"model file)")
    if base_dir is not None and any(_uses_external(t) for t in m.graph.initializer):
        try:
            from onnx.external_data_helper import load_external_data_for_model
            load_external_data_for_model(m, base_dir)
        except Exception as e:  # noqa: BLE001 - any failure here is a bad/missing data file
            raise errors.OnnxError(f"{where}: cannot load external tensor data: {e}") from None
    return m


def _uses_external(t) -> bool:
    return t.data_location == TensorProto.EXTERNAL


# ---------------------------------------------------------------- the importer

class Importer:
    """Translation state for one ONNX graph; converters in onnx_ops.py call its helpers."""

    def __init__(self, model, graph: Graph, opset: int):
        self.model, self.g, self.opset = model, graph, opset
        self.env: dict[str, Any] = {}      # ONNX value name -> Value | Known | None | _POISON
        self.node = None                   # NodeProto being converted
        self.source: str | None = None
        self.raw: list = []                # current node's inputs as stored in env
        self.input_values: dict[int, str] = {}  # id(Value) -> ONNX graph input name
        self._scalars: dict = {}
        self._fn_count = 0

    # -- attributes and inputs
    def attrs(self, node) -> dict:
        out = {}
        for a in node.attribute:
            if a.ref_attr_name:
                continue
            if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                out[a.name] = a  # control flow: converters decide (none do yet)
                continue
            v = helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            elif isinstance(v, onnx.TensorProto):
                v = tensor_to_numpy(v)
            out[a.name] = v
        return out

    def has(self, i: int) -> bool:
        return i < len(self.raw) and self.raw[i] is not None

    def const_value(self, i: int):
        """The numpy value of input ``i`` when it is a constant (object array if symbolic)."""
        v = self.raw[i] if i < len(self.raw) else None
        if isinstance(v, Known):
            return v.data
        if isinstance(v, Value) and v.kind == "const" and v.data is not None:
            return v.data
        return None

    def ints(self, i: int, what: str = "") -> list:
        """Input ``i`` as a list of ints / symbolic Dims; NeedsConstant if computed at run time."""
        d = self.const_value(i)
        if d is None:
            name = self.node.input[i]
            raise NeedsConstant(f"input {i} ({name!r}{', ' + what if what else ''}) must be known "
                                f"at compile time, but it is computed at run time",
                                self.graph_inputs_of(self.raw[i]))
        return [x if isinstance(x, SymExpr) else int(x) for x in np.asarray(d).reshape(-1)]

    def graph_inputs_of(self, v) -> set[str]:
        """Names of the ONNX graph inputs that ``v`` is computed from."""
        out, seen, stack = set(), set(), [v]
        while stack:
            x = stack.pop()
            if not isinstance(x, Value) or id(x) in seen:
                continue
            seen.add(id(x))
            if x.kind == "input":
                out.add(self.input_values.get(id(x), x.name))
            elif x.producer is not None:
                stack.extend(x.producer.inputs)
        return out

    def scalar(self, i: int, default=None):
        if not self.has(i):
            return default
        vals = self.ints(i) if self.const_value(i) is not None and np.asarray(
            self.const_value(i)).dtype.kind in "iuO" else None
        if vals is not None:
            return vals[0]
        d = self.const_value(i)
        if d is None:
            self.ints(i)  # raises NeedsConstant
        return np.asarray(d).reshape(-1)[0].item()

    # -- building
    def op(self, name: str, inputs, attrs: dict | None = None):
        """Append an Ember op; evaluated at once (a constant) when all inputs are constants."""
        from ..ir.ops import get
        inputs = list(inputs)
        if all(isinstance(i, Value) and i.kind == "const" and i.data is not None for i in inputs) \
                and _static_attrs(attrs or {}):
            from ..ir.interpreter import run_node
            opdef = get(name)
            a = opdef.check_attrs(attrs or {})
            types = opdef.infer([v.type for v in inputs], a)
            if all(t.is_static for t in types) and sum(_numel(t) for t in types) <= 1 << 20:
                class _N:  # run_node only reads op, attrs and outputs' dtypes
                    pass
                n = _N()
                n.op, n.attrs = name, a
                n.outputs = [Value("_", t) for t in types]
                outs = run_node(n, [i.data for i in inputs], {})
                res = [self.const_array(o, t.dtype) for o, t in zip(outs, types)]
                return res[0] if len(res) == 1 else res
        return self.g.op(name, inputs, attrs or {}, source=self.source)

    def const_array(self, data, dt: dtypes.DType | None = None, name: str = "c") -> Value:
        data = np.asarray(data)
        dt = dt or dtypes.from_numpy(data.dtype)
        v = Value(self.g.fresh_name(name), TensorType(dt, tuple(data.shape)), "const",
                  data=np.require(np.asarray(data).astype(dt.np), requirements="C"))
        self.g.constants.append(v)
        return v

    def const(self, value, dtype: dtypes.DType) -> Value:
        """A 0-d constant, shared between uses."""
        key = (dtype.name, repr(value))
        if key not in self._scalars:
            self._scalars[key] = self.const_array(np.array(value, dtype=dtype.np), dtype)
        return self._scalars[key]

    def cast(self, v: Value, dt: dtypes.DType) -> Value:
        return v if v.dtype is dt else self.op("cast", [v], {"dtype": dt})

    def materialize(self, k: Known) -> Value:
        """A runtime tensor holding the (partly symbolic) values of ``k``."""
        if k.value is not None:
            return k.value
        flat = k.data.reshape(-1)
        if not any(isinstance(x, SymExpr) for x in flat):
            k.value = self.const_array(np.array(flat.astype(np.int64)).reshape(k.data.shape), k.dtype)
            return k.value
        parts = []
        for x in flat:
            if isinstance(x, SymExpr):
                parts.append(self.op("arange", [], {"start": x, "end": x + 1, "step": 1,
                                                    "dtype": dtypes.i64}))
            else:
                parts.append(self.const_array(np.array([int(x)], np.int64), dtypes.i64))
        v = parts[0] if len(parts) == 1 else self.op("concat", parts, {"axis": 0})
        v = self.op("reshape", [v], {"shape": tuple(k.data.shape)})
        k.value = self.cast(v, k.dtype)
        return k.value


def _numel(t: TensorType) -> int:
    n = 1
    for d in t.shape:
        n *= d
    return n


def _static_attrs(attrs) -> bool:
    def ok(v):
        if isinstance(v, SymExpr):
            return False
        if isinstance(v, (tuple, list)):
            return all(ok(x) for x in v)
        return True
    return all(ok(v) for v in attrs.values())


def tensor_to_numpy(t) -> np.ndarray:
    if t.data_type == TensorProto.BFLOAT16:  # an ml_dtypes.bfloat16 array, whatever onnx returns
        return np.asarray(numpy_helper.to_array(t)).astype(dtypes.bf16.np)
    if t.data_location == TensorProto.EXTERNAL and not t.raw_data:
        raise errors.OnnxError(f"initializer {t.name!r} keeps its data in an external file that "
                               f"was not loaded; pass the .onnx path (not bytes) so Ember can "
                               f"find it next to the model")
    return numpy_helper.to_array(t)


class _Inputs:
    """A node's inputs for a converter: ``ins[i]`` is a Value (Known ones materialized on
    use) or None for a missing optional input."""

    def __init__(self, cx: Importer, raw: list):
        self.cx, self.raw = cx, raw

    def __len__(self):
        return len(self.raw)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self.raw)))]
        if i >= len(self.raw) or i < -len(self.raw):
            return None
        v = self.raw[i]
        return self.cx.materialize(v) if isinstance(v, Known) else v

    def __iter__(self):
        return (self[k] for k in range(len(self.raw)))


def _value_info_type(vi, name_syms: dict, fresh) -> tuple[dtypes.DType, tuple]:
    t = vi.type
    if not t.HasField("tensor_type"):
        kind = t.WhichOneof("value")
        raise Unsupported(f"{kind} inputs are not supported (only tensors)")
    tt = t.tensor_type
    dt = onnx_dtype(tt.elem_type)
    if not tt.HasField("shape"):
        raise Unsupported("the input has no shape (not even a rank); give its shape in the model")
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            if d.dim_value < 0:
                raise errors.OnnxError(f"input {vi.name!r} has a negative dim {d.dim_value}")
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(sym(name_syms.setdefault(d.dim_param, _sym_name(d.dim_param, name_syms))))
        else:
            dims.append(sym(fresh()))
    return dt, tuple(dims)


def _sym_name(p: str, taken: dict) -> str:
    s = ident(p, "d")
    base, k = s, 1
    while s in taken.values():
        k += 1
        s = f"{base}_{k}"
    return s


def _check_graph(g_proto, known: set[str]) -> list:
    """Topologically order nodes; OnnxError for cycles and names nothing defines."""
    produced = {}
    for k, n in enumerate(g_proto.node):
        for o in n.output:
            if o:
                if o in produced or o in known:
                    raise errors.OnnxError(f"value {o!r} is produced twice (node "
                                           f"{n.name or n.op_type + '#' + str(k)}); an ONNX graph "
                                           f"must be in SSA form")
                produced[o] = k
    order, state = [], {}
    for start in range(len(g_proto.node)):
        if state.get(start):
            continue
        stack = [(start, iter(g_proto.node[start].input))]
        state[start] = 1
        while stack:
            k, it = stack[-1]
            nxt = None
            for i in it:
                if not i or i in known:
                    continue
                if i not in produced:
                    n = g_proto.node[k]
                    raise errors.OnnxError(
                        f"node {n.name or n.op_type!r} ({n.op_type}) reads {i!r}, which is not a graph "
                        f"input, an initializer, nor produced by any node (a missing initializer?)")
                p = produced[i]
                if state.get(p) == 1:
                    raise errors.OnnxError(f"the graph has a cycle through node "
                                           f"{g_proto.node[p].name or g_proto.node[p].op_type!r} "
                                           f"(value {i!r}); ONNX graphs must be acyclic")
                if not state.get(p):
                    nxt = p
                    break
            if nxt is None:
                stack.pop()
                state[k] = 2
                order.append(g_proto.node[k])
            else:
                state[nxt] = 1
                stack.append((nxt, iter(g_proto.node[nxt].input)))
    return order


def from_onnx(model, dynamic=None, *, input_shapes: dict | None = None,
              bind_inputs: dict | None = None) -> Graph:
    """Import an ONNX model (ModelProto, path to a .onnx file, or its bytes) as an Ember graph.

    Dims named by ``dim_param`` become symbols (dynamic), dims with neither a value nor a
    name get fresh symbols, and ``dynamic`` may name more, torch-style:
    ``{"input_ids": {0: "batch", 1: "seq"}}``. ``input_shapes`` ({name: shape}) fixes input
    shapes instead (static); ``bind_inputs`` ({name: array}) turns inputs into constants.

    >>> g = from_onnx("mlp.onnx")
    >>> g.inputs[0].type
    f32[batch, 784]
    """
    m = load_onnx(model)
    return _import(m, dynamic or {}, input_shapes or {}, bind_inputs or {})


def _opset_of(m) -> int:
    for o in m.opset_import:
        if o.domain in _DOMAINS:
            return int(o.version)
    if not m.opset_import:
        raise errors.OnnxError("the model declares no opset (opset_import is empty)")
    return 1  # only non-default domains: every node will be reported as unsupported


def _import(m, dynamic: dict, input_shapes: dict, bind: dict) -> Graph:
    from . import onnx_ops
    from . import onnx_ops_quant, onnx_ops_rnn  # noqa: F401 - register their converters
    if m.functions:
        try:
            from onnx import inliner
            m = inliner.inline_local_functions(m)
        except Exception as e:  # noqa: BLE001
            raise errors.OnnxError(f"cannot inline the model's local functions: {e}") from None
    gp = m.graph
    opset = _opset_of(m)
    g = Graph(ident(gp.name or "main", "g") if gp.name else "main")
    cx = Importer(m, g, opset)
    unsupported: list[dict] = []
    inits = {t.name: t for t in gp.initializer}
    for t in gp.sparse_initializer:
        unsupported.append({"op": "onnx::SparseInitializer", "node": t.values.name,
                            "source": "sparse initializers are not supported"})

    # initializers -> constants
    for name, t in inits.items():
        try:
            arr = tensor_to_numpy(t)
            dt = onnx_dtype(t.data_type)
        except Unsupported as e:
            unsupported.append({"op": "onnx::Initializer", "node": name, "source": str(e)})
            cx.env[name] = _POISON
            continue
        except EmberError:
            raise
        except Exception as e:  # noqa: BLE001 - corrupt tensor payloads
            raise errors.OnnxError(f"initializer {name!r} cannot be read: {e}") from None
        cx.env[name] = cx.const_array(arr, dt, ident(name, "w"))

    # inputs (initializers listed as inputs are constants, not runtime inputs)
    name_syms: dict[str, str] = {}
    counter = iter(range(1 << 30))

    def fresh():
        while True:
            s = f"unk{next(counter)}"
            if s not in name_syms.values():
                return s
    input_names: dict[str, str] = {}
    for vi in gp.input:
        if vi.name in inits:
            continue
        if vi.name in bind:
            arr = np.asarray(bind[vi.name])
            cx.env[vi.name] = cx.const_array(arr, dtypes.from_numpy(arr.dtype), ident(vi.name))
            continue
        try:
            dt, shape = _value_info_type(vi, name_syms, fresh)
        except Unsupported as e:
            unsupported.append({"op": "onnx::GraphInput", "node": vi.name, "source": str(e)})
            cx.env[vi.name] = _POISON
            continue
        if vi.name in input_shapes:
            want = tuple(int(d) for d in input_shapes[vi.name])
            if len(want) != len(shape):
                raise errors.InputError(f"input {vi.name!r} has rank {len(shape)}, "
                                        f"got shape {want}")
            shape = want
        for ax, s in (dynamic.get(vi.name) or {}).items():
            shape = tuple(sym(ident(s, "d")) if k == ax else d for k, d in enumerate(shape))
        v = g.add_input(ident(vi.name), TensorType(dt, shape))
        cx.env[vi.name] = v
        cx.input_values[id(v)] = vi.name
        input_names[v.name] = vi.name
    for s in g.symbols:
        g.sym_ranges.setdefault(s, (1, INT_MAX))

    known = {t.name for t in gp.initializer} | {vi.name for vi in gp.input}
    order = _check_graph(gp, known)
    needs: set[str] = set()
    for n in order:
        _convert_node(cx, n, onnx_ops, unsupported, needs, depth=0)

    outs, out_names = [], []
    for vo in gp.output:
        v = cx.env.get(vo.name)
        if vo.name not in cx.env:
            raise errors.OnnxError(f"graph output {vo.name!r} is not produced by any node")
        if v is _POISON:
            continue
        if isinstance(v, Known):
            v = cx.materialize(v)
        if v is None:
            raise errors.OnnxError(f"graph output {vo.name!r} is an omitted optional value")
        outs.append(v)
        out_names.append(vo.name)
    if unsupported:
        err = UnsupportedOpError(unsupported, framework="ONNX")
        err.needs_inputs = needs
        raise err
    g.outputs = outs
    g.output_names = out_names
    g.meta["onnx_input_names"] = input_names
    g.meta["onnx_opset"] = opset
    return g


def _convert_node(cx: Importer, n, onnx_ops, unsupported: list, needs: set, depth: int):
    name = n.name or f"{n.op_type}_{len(cx.g.nodes)}"
    cx.node, cx.source = n, f"onnx node {name!r} ({n.op_type})"
    raw = [cx.env.get(i) if i else None for i in n.input]
    domain = n.domain if n.domain not in _DOMAINS else ""
    fn = onnx_ops.CONVERTERS.get(n.op_type) if not domain else \
        onnx_ops.DOMAIN_CONVERTERS.get((domain, n.op_type))  # ai.onnx.ml, ai.onnx.preview...
    if any(r is _POISON for r in raw):
        # downstream of an unsupported node: still report this one if it is unknown too
        if fn is None and (domain or not _has_function(cx, n)):
            op = f"{domain}::{n.op_type}" if domain else f"onnx::{n.op_type}"
            unsupported.append({"op": op, "node": name, "source": None})
        for o in n.output:
            cx.env[o] = _POISON
        return
    cx.raw = raw
    try:
        if fn is None:
            body = _function_body(cx, n) if not domain and depth < 8 else None
            if body is None:
                op = f"{domain}::{n.op_type}" if domain else f"onnx::{n.op_type}"
                unsupported.append({"op": op, "node": name, "source": None})
                for o in n.output:
                    cx.env[o] = _POISON
                return
            for sub in body:
                _convert_node(cx, sub, onnx_ops, unsupported, needs, depth + 1)
            return
        res = onnx_ops.fold_known(cx, n, raw)
        if res is None:
            res = fn(cx, _Inputs(cx, raw), cx.attrs(n))
    except NeedsConstant as e:
        needs |= e.inputs
        unsupported.append({"op": f"onnx::{n.op_type}", "node": name, "source": str(e)})
        res = None
        for o in n.output:
            cx.env[o] = _POISON
        return
    except Unsupported as e:
        unsupported.append({"op": f"onnx::{n.op_type}", "node": name, "source": str(e)})
        for o in n.output:
            cx.env[o] = _POISON
        return
    except UnsupportedOpError:
        raise
    except EmberError as e:
        try:
            err = type(e)(f"onnx node {name!r} ({n.op_type}): {e}")
        except Exception:  # noqa: BLE001 - an error class with another signature
            err = errors.OnnxError(f"onnx node {name!r} ({n.op_type}): {e}")
        raise err from None
    except (ValueError, TypeError, IndexError, KeyError, OverflowError, ZeroDivisionError) as e:
        # a malformed node (wrong attribute types, impossible shapes): name it, no traceback
        raise errors.OnnxError(f"onnx node {name!r} ({n.op_type}) cannot be imported: "
                               f"{type(e).__name__}: {e}") from None
    res = res if isinstance(res, (list, tuple)) else [res]
    for k, o in enumerate(n.output):
        if not o:
            continue
        if k >= len(res) or res[k] is None:
            unsupported.append({"op": f"onnx::{n.op_type}", "node": name,
                                "source": f"output {k} ({o!r}) is not supported"})
            cx.env[o] = _POISON
        else:
            cx.env[o] = res[k]


def _has_function(cx: Importer, n) -> bool:
    try:
        schema = onnx.defs.get_schema(n.op_type, cx.opset, "")
    except Exception:  # noqa: BLE001 - unknown op
        return False
    return bool(schema.has_function or schema.has_context_dependent_function)


def _function_body(cx: Importer, n):
    """The nodes of ``n``'s ONNX function body (inputs/outputs renamed), or None if it has none."""
    try:
        schema = onnx.defs.get_schema(n.op_type, cx.opset, "")
    except Exception:  # noqa: BLE001 - unknown op
        return None
    fn = None
    if schema.has_function or schema.has_context_dependent_function:
        try:
            if schema.has_function:
                fn = schema.get_function_with_opset_version(cx.opset) if hasattr(
                    schema, "get_function_with_opset_version") else schema.function_body
            if fn is None or not fn.node:
                types = []
                for r in cx.raw:
                    tp = onnx.TypeProto()
                    if r is not None:
                        dt = r.dtype if isinstance(r, (Value, Known)) else dtypes.f32
                        tp.tensor_type.elem_type = EMBER_TO_ONNX.get(dt, TensorProto.FLOAT)
                        shape = r.shape if isinstance(r, (Value, Known)) else ()
                        for d in shape:
                            dim = tp.tensor_type.shape.dim.add()
                            if isinstance(d, int):
                                dim.dim_value = d
                            else:
                                dim.dim_param = str(d)
                    types.append(tp.SerializeToString())
                data = schema.get_context_dependent_function_with_opset_version(
                    cx.opset, n.SerializeToString(), types)
                fn = onnx.FunctionProto()
                fn.ParseFromString(data)
        except Exception:  # noqa: BLE001 - no usable body for this variant
            fn = None
    if fn is None or not fn.node:
        return None
    cx._fn_count += 1
    pre = f"__fn{cx._fn_count}_"
    rename = {}
    for formal, actual in zip(fn.input, n.input):
        rename[formal] = actual
    for formal in list(fn.input)[len(n.input):]:
        rename[formal] = ""
    for formal, actual in zip(fn.output, n.output):
        rename[formal] = actual
    attrs = {a.name: a for a in n.attribute}
    out = []
    for k, b in enumerate(fn.node):
        nb = onnx.NodeProto()
        nb.CopyFrom(b)
        nb.name = f"{n.name or n.op_type}/{b.op_type}_{k}"
        del nb.input[:]
        nb.input.extend(rename.get(i, pre + i) if i else "" for i in b.input)
        del nb.output[:]
        nb.output.extend(rename.get(o, pre + o) if o else "" for o in b.output)
        del nb.attribute[:]
        for a in b.attribute:
            if a.ref_attr_name:
                if a.ref_attr_name in attrs:
                    na = onnx.AttributeProto()
                    na.CopyFrom(attrs[a.ref_attr_name])
                    na.name = a.name
                    nb.attribute.append(na)
            else:
                nb.attribute.append(a)
        out.append(nb)
    return out


# ---------------------------------------------------------------- onnx.backend implementation

from onnx.backend.base import Backend, BackendRep  # noqa: E402


class EmberBackendRep(BackendRep):
    """A prepared ONNX model. Compiles on first ``run`` for the given input shapes.

    Inputs that Ember needs at compile time (a Reshape's shape fed as a graph input, say)
    are bound to their values in that call: the model is specialized on them, and a call
    with other values compiles again.
    """

    def __init__(self, model, mode: str = "compile"):
        self.model, self.mode = model, mode
        inits = {t.name for t in model.graph.initializer}
        self.input_names = [vi.name for vi in model.graph.input if vi.name not in inits]
        self.frozen: set[str] = set()
        self._cache: dict = {}

    def _build(self, arrays: dict):
        while True:
            shapes = {k: v.shape for k, v in arrays.items()}
            bind = {k: arrays[k] for k in self.frozen}
            try:
                return _import(self.model, {}, shapes, bind)
            except UnsupportedOpError as e:
                more = getattr(e, "needs_inputs", set()) - self.frozen
                if not more:
                    raise
                self.frozen |= more

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            arrays = {k: np.asarray(inputs[k]) for k in self.input_names}
        else:
            inputs = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
            arrays = {k: np.asarray(v) for k, v in zip(self.input_names, inputs)}
        key = tuple((k, a.shape, a.dtype.str) for k, a in arrays.items())
        key += tuple((k, arrays[k].tobytes()) for k in sorted(self.frozen) if k in arrays)
        entry = self._cache.get(key)
        if entry is None:
            g = self._build(arrays)
            key = tuple((k, a.shape, a.dtype.str) for k, a in arrays.items())
            key += tuple((k, arrays[k].tobytes()) for k in sorted(self.frozen) if k in arrays)
            if self.mode == "compile":
                from ..api import compile as ember_compile
                entry = (g, ember_compile(g))
            else:
                from ..ir import verify
                verify(g)
                entry = (g, None)
            self._cache[key] = entry
        g, compiled = entry
        names = g.meta["onnx_input_names"]
        feed = [arrays[names[v.name]] for v in g.inputs]
        if compiled is not None:
            return list(compiled.run_numpy(feed))
        from ..ir import interpret
        return list(interpret(g, feed))


class EmberBackend(Backend):
    """``onnx.backend`` face of Ember, so ONNX's backend test suite can run against it.

    >>> rep = EmberBackend.prepare(onnx.load("model.onnx"))
    >>> outputs = rep.run([x])
    """

    mode = "compile"  # or "interpret": the numpy reference instead of compiled C

    @classmethod
    def is_compatible(cls, model, device: str = "CPU", **kwargs) -> bool:
        return True

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs):
        super().prepare(model, device, **kwargs)
        return EmberBackendRep(load_onnx(model), kwargs.get("mode", cls.mode))

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper() == "CPU"
