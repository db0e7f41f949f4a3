"""Run a compiled model: bind inputs, check shapes, call the one native entry point.

Needs numpy only. The native library exports ``ember_main`` and ``ember_workspace_size``
(see backends/cpu/codegen.py). Each thread gets its own workspace per input shape, so one
model may be called from many threads at once; the GIL is released during the call.
"""
from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import DTypeError, InputError
from ..ir import dtypes
from ..ir.symbolic import SymExpr, evaluate, parse_dim

_P = ctypes.c_void_p


@dataclass
class TensorSpec:
    name: str
    dtype: str
    shape: list  # ints and dim expressions as text ("batch", "2*seq")

    def dims(self):
        return [d if isinstance(d, int) else parse_dim(d) for d in self.shape]

    def describe(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


class _ShapeState:
    """Everything that depends only on the input shapes, computed once per shape per thread."""
    __slots__ = ("dims", "out_shapes", "ws", "ws_ptr")


class NativeModule:
    def __init__(self, lib_path: str, symbols: list[str], inputs: list[TensorSpec],
                 outputs: list[TensorSpec], consts: list[np.ndarray],
                 sym_ranges: dict | None = None):
        self.lib_path = str(lib_path)
        self.lib = ctypes.CDLL(self.lib_path)  # CDLL releases the GIL during calls
        self._main = self.lib.ember_main
        self._main.restype = ctypes.c_int
        self._main.argtypes = [_P, _P, _P, _P, _P]
        self._wsize = self.lib.ember_workspace_size
        self._wsize.restype = ctypes.c_int64
        self._wsize.argtypes = [_P]
        self.symbols, self.inputs, self.outputs = symbols, inputs, outputs
        self.sym_ranges = dict(sym_ranges or {})
        self._in_dims = [s.dims() for s in inputs]
        self._out_dims = [s.dims() for s in outputs]
        self._in_np = [dtypes.parse(s.dtype).np for s in inputs]
        self._out_np = [dtypes.parse(s.dtype).np for s in outputs]
        self.consts = [np.ascontiguousarray(c) for c in consts]
        self._const_ptrs = (_P * max(len(consts), 1))(*[c.ctypes.data for c in self.consts])
        self._local = threading.local()

    # -- shapes
    def bind(self, shapes) -> dict[str, int]:
        """Symbol values from input shapes; InputError naming the input and dim otherwise."""
        env: dict[str, int] = {}
        for spec, dims, shape in zip(self.inputs, self._in_dims, shapes):
            if len(shape) != len(dims):
                raise InputError(f"input {spec.name!r}: expected rank {len(dims)} "
                                 f"({spec.describe()}), got shape {tuple(shape)}")
            for k, (d, n) in enumerate(zip(dims, shape)):
                if isinstance(d, SymExpr) and str(d) in d.free_symbols:
                    name = str(d)
                    if name in env and env[name] != n:
                        raise InputError(f"input {spec.name!r} dim {k} ({name}) is {n}, but {name} "
                                         f"is {env[name]} from an earlier input")
                    env[name] = n
        for name, (lo, hi) in self.sym_ranges.items():
            if name in env and not lo <= env[name] <= hi:
                raise InputError(f"dim {name} = {env[name]} is outside the compiled range "
                                 f"[{lo}, {hi}]; recompile with a wider dynamic range")
        for spec, dims, shape in zip(self.inputs, self._in_dims, shapes):
            for k, (d, n) in enumerate(zip(dims, shape)):
                try:
                    want = evaluate(d, env)
                except KeyError:
                    raise InputError(f"input {spec.name!r} dim {k} is {d}, which no input "
                                     f"binds") from None
                if want != n:
                    hint = "" if isinstance(d, int) else f" (= {d})"
                    raise InputError(f"input {spec.name!r}: dim {k} must be {want}{hint}, got {n}; "
                                     f"expected shape {spec.describe()}, got {tuple(shape)}")
        return env

    def _state(self, shapes) -> _ShapeState:
        cache = getattr(self._local, "states", None)
        if cache is None:
            cache = self._local.states = {}
        st = cache.get(shapes)
        if st is None:
            env = self.bind(shapes)
            st = _ShapeState()
            st.dims = (ctypes.c_int64 * max(len(self.symbols), 1))(*[env[s] for s in self.symbols])
            st.out_shapes = [tuple(evaluate(d, env) for d in dims) for dims in self._out_dims]
            nbytes = int(self._wsize(st.dims))
            st.ws = np.empty(nbytes + 64, dtype=np.uint8)
            st.ws_ptr = (st.ws.ctypes.data + 63) // 64 * 64
            if len(cache) >= 8:  # keep a few shapes per thread, not every one ever seen
                cache.pop(next(iter(cache)))
            cache[shapes] = st
        return st

    # -- calling
    def run(self, arrays) -> list[np.ndarray]:
        """Run on numpy arrays (in input order); returns fresh numpy outputs."""
        if len(arrays) != len(self.inputs):
            names = ", ".join(s.name for s in self.inputs)
            raise InputError(f"model takes {len(self.inputs)} inputs ({names}), got {len(arrays)}")
        ins = []
        for spec, want, a in zip(self.inputs, self._in_np, arrays):
            a = np.asarray(a)
            if a.dtype != want:
                raise DTypeError(f"input {spec.name!r}: expected dtype {spec.dtype} "
                                 f"({want}), got {a.dtype}; convert with .astype(np.{want})")
            ins.append(np.ascontiguousarray(a))
        st = self._state(tuple(a.shape for a in ins))
        outs = [np.empty(s, dtype=dt) for s, dt in zip(st.out_shapes, self._out_np)]
        in_ptrs = (_P * max(len(ins), 1))(*[a.ctypes.data for a in ins])
        out_ptrs = (_P * max(len(outs), 1))(*[o.ctypes.data for o in outs])
        rc = self._main(st.dims, in_ptrs, out_ptrs, self._const_ptrs, st.ws_ptr)
        if rc != 0:
            raise RuntimeError(f"native model returned error code {rc}")
        return outs
