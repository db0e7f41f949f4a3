"""Run a compiled model: bind inputs, check shapes, call the one native entry point.

Needs numpy only. Calls go through a small cached CPython extension (``fastcall.py``) when
one can be built here, else through ctypes. The native library exports ``ember_main`` and ``ember_workspace_size``
(see backends/cpu/codegen.py). Each concurrent call takes its own workspace from a pool, so one
model may be called from many threads at once; the GIL is released during the call.
"""
from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import DTypeError, InputError
from ..ir import dtypes
from ..ir.symbolic import SymExpr, evaluate, parse_dim
from . import fastcall

_P = ctypes.c_void_p

# OpenMP threads that spin for long after a parallel region steal the cores from everything
# else in the process (another OpenMP runtime such as PyTorch's, or the next Python step).
# A short spin keeps back-to-back kernels fast without that. Read once, when libgomp loads.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")


def default_threads() -> int:
    """The cores this process may use (its CPU affinity), the same count PyTorch's default
    picks on this kind of machine, so the two runtimes never ask for more threads than cores."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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
    """What depends only on the input shapes: computed once per shape, shared by all threads."""
    __slots__ = ("dims", "dims_addr", "out_shapes", "nbytes")


class _Slot:
    """One call's scratch: a workspace (grown to the largest shape seen) and pointer arrays.

    Slots are pooled: a call takes one and gives it back, so memory grows with the number
    of concurrent calls, not with threads times shapes.
    """
    __slots__ = ("ws", "ptr", "cap", "in_ptrs", "out_ptrs")

    def __init__(self, n_in: int, n_out: int):
        self.ws, self.ptr, self.cap = None, 0, -1
        self.in_ptrs = (_P * max(n_in, 1))()
        self.out_ptrs = (_P * max(n_out, 1))()

    def reserve(self, nbytes: int) -> None:
        if nbytes > self.cap:
            self.ws = np.empty(nbytes + 64, dtype=np.uint8)
            self.ptr = (self.ws.ctypes.data + 63) // 64 * 64
            self.cap = nbytes


class NativeModule:
    def __init__(self, lib_path: str, symbols: list[str], inputs: list[TensorSpec],
                 outputs: list[TensorSpec], consts: list[np.ndarray],
                 sym_ranges: dict | None = None, threads: int | None = None):
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
        self._shapes: dict = {}
        self._shapes_lock = threading.Lock()
        self._pool: list[_Slot] = []
        self._torch_dtypes = self._torch_out = self._torch = None
        self._n_in = len(inputs)
        self._fast = fastcall.load()   # None: call through ctypes
        self._fn_addr = ctypes.cast(self._main, _P).value
        self._consts_addr = ctypes.addressof(self._const_ptrs)
        self._runner = self._fast_runner()
        self._runner_slot = _Slot(0, 0)
        self.threads = 0
        self.set_threads(threads)

    def set_threads(self, n: int | None) -> None:
        """Threads for this model's parallel kernels: ``n``, else $EMBER_NUM_THREADS, else the
        cores this process may run on. Applied on every call, per model."""
        if n is None:
            env = os.environ.get("EMBER_NUM_THREADS", "").strip()
            if env:
                if not env.isdigit() or int(env) < 1:
                    raise InputError(f"EMBER_NUM_THREADS must be a positive integer, got {env!r}")
                n = int(env)
            else:
                n = default_threads()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"threads must be a positive integer, got {n!r}")
        self.threads = n
        setter = getattr(self.lib, "ember_set_num_threads", None)  # absent in pre-0.x libraries
        if setter is not None:
            setter.argtypes = [ctypes.c_int]
            setter(n)

    def _fast_runner(self):
        """The shim's all-C call path for this model (None without the shim)."""
        if self._fast is None or not hasattr(self._fast, "Runner"):
            return None
        try:
            return self._fast.Runner(self._fn_addr, self._consts_addr,
                                     tuple(np.dtype(d).num for d in self._in_np),
                                     tuple(len(d) for d in self._in_dims),
                                     tuple(np.dtype(d).num for d in self._out_np))
        except ValueError:  # more inputs/outputs or a higher rank than the runner takes
            return None

    def _prime(self, shapes, st) -> None:
        """Point the runner at ``shapes``: later calls with them stay in C. The runner has one
        workspace of its own, grown to the largest shape; ``keep`` holds the buffer it was
        primed with, so a buffer a concurrent call is still using is never freed."""
        slot = self._runner_slot
        slot.reserve(st.nbytes)
        self._runner.prime(shapes, st.dims_addr, tuple(st.out_shapes), slot.ptr, (st, slot.ws))

    # -- shapes
    def bind(self, shapes) -> dict[str, int]:
        """Symbol values from input shapes; InputError naming the input and dim otherwise."""
        env: dict[str, int] = {}
        where: dict[str, str] = {}  # symbol -> the input dim that bound it, for messages
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
                    where.setdefault(name, f"input {spec.name!r} dim {k}")
        for name, (lo, hi) in self.sym_ranges.items():
            if name in env and not lo <= env[name] <= hi:
                raise InputError(f"{where[name]} ({name}) is {env[name]}, outside the compiled range "
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
        st = self._shapes.get(shapes)
        if st is None:
            env = self.bind(shapes)
            st = _ShapeState()
            st.dims = (ctypes.c_int64 * max(len(self.symbols), 1))(*[env[s] for s in self.symbols])
            st.dims_addr = ctypes.addressof(st.dims)
            st.out_shapes = [tuple(evaluate(d, env) for d in dims) for dims in self._out_dims]
            st.nbytes = int(self._wsize(st.dims))
            with self._shapes_lock:
                if len(self._shapes) >= 64:  # remember recent shapes, not every one ever seen
                    self._shapes.pop(next(iter(self._shapes)))
                self._shapes[shapes] = st
        return st

    # -- calling
    def _call(self, shapes, in_ptrs, alloc):
        """The ctypes path (no fastcall shim): pointers are Python ints."""
        st = self._state(shapes)
        outs = [alloc(shape, k) for k, shape in enumerate(st.out_shapes)]
        try:
            slot = self._pool.pop()  # atomic under the GIL
        except IndexError:
            slot = _Slot(len(self.inputs), len(self.outputs))
        try:
            slot.reserve(st.nbytes)
            ip, op = slot.in_ptrs, slot.out_ptrs
            for k, p in enumerate(in_ptrs):
                ip[k] = p
            for k, o in enumerate(outs):
                op[k] = o[1]
            rc = self._main(st.dims, ip, op, self._const_ptrs, slot.ptr)
        finally:
            self._pool.append(slot)
        if rc != 0:
            raise RuntimeError(f"native model returned error code {rc}")
        return [o[0] for o in outs]

    def _fast_call(self, st, ins, outs) -> int:
        """The shim path: ``ins``/``outs`` hold arrays or addresses; returns the shim's code."""
        if not st.nbytes:
            return self._fast.call(self._fn_addr, st.dims_addr, ins, outs, self._consts_addr, 0)
        try:
            slot = self._pool.pop()  # atomic under the GIL
        except IndexError:
            slot = _Slot(len(self.inputs), len(self.outputs))
        try:
            slot.reserve(st.nbytes)
            return self._fast.call(self._fn_addr, st.dims_addr, ins, outs, self._consts_addr, slot.ptr)
        finally:
            self._pool.append(slot)

    def _check_dtype(self, k, got, want) -> None:
        if got != want:
            spec = self.inputs[k]
            raise DTypeError(f"input {spec.name!r}: expected dtype {spec.dtype} ({self._in_np[k]}), "
                             f"got {got}; convert it first (numpy: .astype, torch: .to)")

    def _count(self, n) -> None:
        if n != len(self.inputs):
            names = ", ".join(s.name for s in self.inputs)
            raise InputError(f"model takes {len(self.inputs)} inputs ({names}), got {n}")

    def _as_arrays(self, arrays) -> list:
        ins = []
        for k, a in enumerate(arrays):
            if type(a) is not np.ndarray:
                a = np.asarray(a)
            self._check_dtype(k, a.dtype, self._in_np[k])
            if not a.flags.c_contiguous:
                a = np.require(a, requirements="C")
            ins.append(a)
        return ins

    def run(self, arrays) -> list[np.ndarray]:
        """Run on numpy arrays (in input order); returns fresh numpy outputs."""
        runner = self._runner
        if runner is not None:
            outs = runner(arrays)   # the shapes of the last call: all in C
            if outs is not None:
                return outs
        if len(arrays) != self._n_in:
            self._count(len(arrays))
        fast = self._fast
        if fast is None:
            ins = self._as_arrays(arrays)
            out_np = self._out_np

            def alloc(shape, k):
                o = np.empty(shape, dtype=out_np[k])
                return o, o.ctypes.data
            return self._call(tuple(a.shape for a in ins), [a.ctypes.data for a in ins], alloc)
        want = self._in_np
        for k, a in enumerate(arrays):  # the common case costs one identity test per input
            if type(a) is not np.ndarray or a.dtype is not want[k]:
                arrays = self._as_arrays(arrays)
                break
        shapes = tuple([a.shape for a in arrays])
        st = self._shapes.get(shapes) or self._state(shapes)
        if runner is not None:
            self._prime(shapes, st)
        outs = [np.empty(s, d) for s, d in zip(st.out_shapes, self._out_np)]
        rc = self._fast_call(st, arrays, outs)
        if rc <= -1000:  # an input is not C-contiguous: copy it and go again
            rc = self._fast_call(st, self._as_arrays(arrays), outs)
        if rc != 0:
            raise RuntimeError(f"native model returned error code {rc}")
        return outs

    def run_torch(self, tensors) -> list:
        """Run on CPU torch tensors without copies; returns torch tensors."""
        torch = self._torch
        if torch is None:
            import torch
            self._torch_dtypes = [_torch_dtype(torch, d) for d in self._in_np]
            self._torch_out = [_torch_dtype(torch, d) for d in self._out_np]
            self._torch = torch
        if len(tensors) != self._n_in:
            self._count(len(tensors))
        runner = self._runner
        if runner is not None:
            # numpy views of the tensors (no copies) through the all-C path; any odd tensor
            # (requires grad, not CPU, a dtype numpy lacks) raises here or is declined there
            try:
                outs = runner(tuple([t.numpy() for t in tensors]))
            except (AttributeError, RuntimeError, TypeError):
                outs = None
            if outs is not None:
                return [torch.from_numpy(o) for o in outs]
        ins = []
        want, tensor = self._torch_dtypes, torch.Tensor
        for k, t in enumerate(tensors):
            if not (isinstance(t, tensor) and t.dtype is want[k] and t.is_cpu and t.is_contiguous()):
                if not isinstance(t, torch.Tensor):
                    t = torch.as_tensor(np.asarray(t))
                self._check_dtype(k, t.dtype, want[k])
                if t.device.type != "cpu":
                    t = t.cpu()
                if not t.is_contiguous():
                    t = t.contiguous()
            ins.append(t)
        out_t = self._torch_out
        shapes = tuple([tuple(t.shape) for t in ins])
        if self._fast is None:
            def alloc(shape, k):
                o = torch.empty(shape, dtype=out_t[k])
                return o, o.data_ptr()
            return self._call(shapes, [t.data_ptr() for t in ins], alloc)
        st = self._shapes.get(shapes) or self._state(shapes)
        if runner is not None:
            self._prime(shapes, st)
        # torch.empty(*shape) skips keyword parsing, which costs as much as the allocation
        default = torch.get_default_dtype()
        outs = [torch.empty(*s) if d is default and s else torch.empty(s, dtype=d)
                for s, d in zip(st.out_shapes, out_t)]
        # ins stay referenced (alive) until the call returns
        rc = self._fast_call(st, [t.data_ptr() for t in ins], [o.data_ptr() for o in outs])
        if rc != 0:
            raise RuntimeError(f"native model returned error code {rc}")
        return outs


def _torch_dtype(torch, np_dtype):
    if np.dtype(np_dtype).name == "bfloat16":   # ml_dtypes' type: torch.from_numpy refuses it
        return torch.bfloat16
    return torch.from_numpy(np.empty(0, dtype=np_dtype)).dtype
