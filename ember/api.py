"""The user's Python face: ``ember.compile``, ``CompiledModel``, ``InferenceEngine``."""
from __future__ import annotations

import os
import threading
import weakref
from typing import Any

import numpy as np

from . import progress
from .backends.cpu.codegen import generate
from .backends.cpu.toolchain import build
from .errors import EmberError, InputError, UnsupportedOpError
from .ir import Graph
from .ir import verify as verify_graph
from .lower.lowering import lower
from .lower.memory import plan_memory
from .lower.schedule import fuse_epilogues, fuse_rows
from .passes import default_pipeline
from .runtime.artifact import used_consts
from .runtime.executable import NativeModule, TensorSpec


def _spec(v, name=None) -> TensorSpec:
    return TensorSpec(name or v.name, v.dtype.name, [d if isinstance(d, int) else str(d) for d in v.shape])


def _is_torch_module(m) -> bool:
    return type(m).__module__.startswith("torch") or any(
        c.__module__.startswith("torch.nn") for c in type(m).__mro__)


def _is_onnx(model) -> bool:
    if isinstance(model, (str, os.PathLike)):
        return str(model).endswith(".onnx")
    return type(model).__name__ == "ModelProto" and type(model).__module__.startswith("onnx")


def import_model(model, example_inputs=None, dynamic=None) -> Graph:
    """Any supported model -> Ember graph: a torch.nn.Module, an ONNX file or ModelProto."""
    if isinstance(model, Graph):
        return model.clone()  # passes rewrite in place; the caller's graph stays as it was
    if _is_onnx(model):
        try:
            from .frontends.onnx import from_onnx
        except ModuleNotFoundError as e:
            if e.name == "onnx":
                raise EmberError("importing ONNX models needs the onnx package: "
                                 "pip install 'ember-ml[onnx]'") from None
            raise EmberError("this build of Ember has no ONNX importer") from None
        with progress.step("Importing ONNX"):
            return from_onnx(model, dynamic)
    if _is_torch_module(model):
        if example_inputs is None:
            raise InputError("compiling a PyTorch model needs example_inputs, e.g. "
                             "ember.compile(model, (torch.randn(1, 10),))")
        from .frontends.torch import from_torch
        with progress.step("Exporting with torch.export"):
            return from_torch(model, example_inputs, dynamic)
    raise EmberError(f"cannot compile a {type(model).__name__}: pass a torch.nn.Module, "
                     f"an ONNX file path or onnx.ModelProto, or an ember.ir.Graph")


def gather_inputs(names: list[str], args, kwargs) -> list:
    """Positional and keyword arguments -> values in ``names`` order, with clear errors."""
    if len(args) > len(names):
        raise InputError(f"model takes {len(names)} inputs ({', '.join(names)}), got {len(args)} positional")
    vals = dict(zip(names, args))
    for k, v in kwargs.items():
        if k not in names:
            raise InputError(f"unknown input {k!r}; inputs are {', '.join(names)}")
        if k in vals:
            raise InputError(f"input {k!r} given twice")
        vals[k] = v
    missing = [n for n in names if n not in vals]
    if missing:
        raise InputError(f"missing input(s) {', '.join(missing)}")
    return [vals[n] for n in names]


class CompiledModel:
    """A model compiled to native code. Call it like the original model.

    >>> compiled = ember.compile(model, (x,))
    >>> y = compiled(x)          # torch in -> torch out; numpy in -> numpy out
    """

    def __init__(self, graph: Graph, source: str, native: NativeModule, pass_report: str = ""):
        self.graph, self.source, self.native = graph, source, native
        self.pass_report = pass_report
        # filled in by compile(); a model loaded from an artifact has none of these
        self.kernels: int | None = None
        self.fusions: list = []
        self.memory_plan = None
        self.pass_records: list = []
        self.quant_report = None
        self.autotune_log = None  # compile(autotune=True): the tuner's decisions
        self.size_hints: dict = {}  # symbol -> example size, by which kernel forms were chosen
        self.input_names = [v.name for v in graph.inputs]
        self.output_names = list(graph.output_names or [f"output{k}" for k in range(len(graph.outputs))])
        self._out_spec = graph.meta.get("torch_out_spec")

    @property
    def threads(self) -> int:
        """Threads the model's kernels run on; assign to change it (no recompilation)."""
        return self.native.threads

    @threads.setter
    def threads(self, n: int) -> None:
        self.native.set_threads(n)

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.native.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.native.outputs

    def _gather(self, args, kwargs) -> list:
        return gather_inputs(self.input_names, args, kwargs)

    def run_numpy(self, arrays) -> list[np.ndarray]:
        return self.native.run(arrays)

    def __call__(self, *args, **kwargs) -> Any:
        runner = self.native._runner
        if runner is not None and not kwargs:
            outs = runner(args)   # numpy arrays of the last call's shapes: all in C
            if outs is not None:
                return outs[0] if len(outs) == 1 else tuple(outs)
        vals = self._gather(args, kwargs) if kwargs or len(args) != len(self.input_names) else args
        if vals and type(vals[0]).__module__ == "torch" or \
                any(type(v).__module__ == "torch" for v in vals):
            outs = self.native.run_torch(vals)
            if self._out_spec is not None and not self._out_spec.is_leaf():
                from torch.utils import _pytree
                return _pytree.tree_unflatten(outs, self._out_spec)
        else:
            outs = self.native.run(vals)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def profile(self, *args, runs: int = 50, warmup: int = 3, **kwargs):
        """Time every kernel of this model on these inputs: a ``KernelProfile`` whose table
        names each kernel's form and graph nodes, its median time, share and GFLOP/s.

        >>> print(compiled.profile(x, runs=100))
        """
        from .runtime.profile import profile_kernels
        arrays = [_as_numpy(v) for v in self._gather(args, kwargs)]
        return profile_kernels(self.native, arrays, runs=runs, warmup=warmup)

    def save(self, path) -> None:
        """Write a standalone artifact that ``ember.load`` runs with numpy only."""
        from .runtime.artifact import save_model
        save_model(self, path)

    def __repr__(self):
        ins = ", ".join(f"{s.name}: {s.describe()}" for s in self.inputs)
        outs = ", ".join(s.describe() for s in self.outputs)
        return f"<ember.CompiledModel ({ins}) -> ({outs})>"


def compile(model, example_inputs=None, dynamic: dict | None = None, *, opt_level: int = 2,
            dump_after=(), verify: bool | None = None, fallback: str | None = None, quantize=None,
            threads: int | None = None, autotune: bool | None = None):
    """Compile ``model`` for this CPU.

    ``opt_level`` 0 runs no graph passes, 1 cleanups, 2 everything (the default).
    ``verify=True`` (or ``EMBER_VERIFY=1``) checks every pass on the reference interpreter
    and names the first one that changes the model's results. ``fallback="torch"`` runs the
    parts of a PyTorch model that Ember cannot import through PyTorch instead of failing.
    ``quantize="dynamic"`` or ``quantize=ember.quant.static(batches)`` runs int8 where it pays.
    ``threads`` sets how many threads the kernels use (default: $EMBER_NUM_THREADS, else
    every core this process may run on); ``compiled.threads = n`` changes it later.
    ``autotune=True`` (or ``EMBER_AUTOTUNE=1``) benchmarks the fp32 GEMMs' blocking per shape
    on this machine (once: decisions are cached) and prints the fastest; see
    ``compiled.autotune_log``.

    >>> compiled = ember.compile(torch.nn.Linear(10, 1), (torch.randn(1, 10),),
    ...                          dynamic={"input": {0: "batch"}})
    """
    if opt_level not in (0, 1, 2):
        raise InputError(f"opt_level must be 0, 1 or 2, got {opt_level}")
    if fallback not in (None, "torch"):
        raise InputError(f"fallback must be None or 'torch', got {fallback!r}")
    try:
        graph = import_model(model, example_inputs, dynamic)
    except UnsupportedOpError as e:
        if fallback != "torch":
            raise
        from .fallback import compile_with_fallback
        return compile_with_fallback(model, example_inputs, dynamic, e, opt_level=opt_level, verify=verify,
                                     threads=threads)
    verify_graph(graph)
    pm = default_pipeline(opt_level, dump_after, verify, _numpy_inputs(example_inputs, graph))
    graph = pm.run(graph)
    quant_report = None
    if quantize is not None:
        from .quant import quantize_graph
        graph, quant_report = quantize_graph(graph, quantize, _numpy_inputs(example_inputs, graph))
    hints = _symbol_values(graph, _numpy_inputs(example_inputs, graph))
    with progress.step("Generating code"):
        prog = lower(graph, hints)
        fusions: list = []
        if opt_level >= 2:
            fuse_epilogues(prog, fusions)
            fuse_rows(prog, fusions)
        autotune_log = None
        from .backends.cpu import autotune as _autotune
        if _autotune.enabled(autotune):
            with progress.step("Autotuning GEMM tiles"):
                autotune_log = _autotune.tune_program(
                    prog, _model_threads(threads), hints)
        plan = plan_memory(prog, reuse=opt_level >= 1)
        source = generate(prog, plan)
    with progress.step("Compiling C"):
        native = _native(graph, prog, source, threads)
    cm = CompiledModel(graph, source, native, pm.report())
    cm.kernels, cm.fusions, cm.memory_plan, cm.pass_records = len(prog.kernels), fusions, plan, pm.records
    cm.quant_report = quant_report
    cm.autotune_log = autotune_log
    cm.size_hints = hints
    return cm


def _native(graph, prog, source: str, threads: int | None = None, extra_flags: tuple = ()) -> NativeModule:
    """``source`` (generated from ``prog``) built and loaded, with ``graph``'s inputs and outputs."""
    lib = build(source, extra_flags)
    names = graph.output_names or [f"output{k}" for k in range(len(graph.outputs))]
    # a constant no kernel reads (a weight the GEMM reads packed, Winograd's untransposed U)
    # is not kept alive by the module: a placeholder address stands in for it
    used = used_consts(source)
    consts = [a if k in used else np.zeros(1, np.uint8) for k, a in enumerate(prog.const_data)]
    return NativeModule(lib, prog.symbols, [_spec(v) for v in graph.inputs],
                        [_spec(v, n) for v, n in zip(graph.outputs, names)], consts,
                        graph.sym_ranges, threads)


def build_graph(graph: Graph, hints: dict | None = None, extra_flags: tuple = ()) -> tuple[NativeModule, str]:
    """An already optimized graph (a saved artifact's IR, the int8 rewrite's pair) lowered, fused,
    planned and built as ``compile`` does at opt_level 2, without passes or autotuning: the
    loaded module and its C source. ``hints``: symbol -> example size, for kernel forms.

    >>> native, source = build_graph(graph)
    """
    prog = lower(graph, hints)
    fuse_epilogues(prog)
    fuse_rows(prog)
    source = generate(prog, plan_memory(prog, reuse=True))
    return _native(graph, prog, source, extra_flags=extra_flags), source


def load(path, rebuild: bool = False, threads: int | None = None) -> CompiledModel:
    """Load an artifact written by ``CompiledModel.save`` (needs numpy only).

    >>> model = ember.load("model.ember"); y = model(x)
    """
    from .runtime.artifact import load_model
    model = load_model(path, rebuild=rebuild)
    if threads is not None:
        model.threads = threads
    return model


def _numpy_inputs(example_inputs, graph) -> list | None:
    """Example inputs as numpy arrays in graph-input order, when they line up with the graph."""
    if example_inputs is None:
        return None
    if isinstance(example_inputs, dict):
        vals = [example_inputs.get(v.name) for v in graph.inputs]
    else:
        vals = list(example_inputs) if isinstance(example_inputs, (tuple, list)) else [example_inputs]
    tensors = [v for v in vals if hasattr(v, "shape")]
    if len(tensors) != len(graph.inputs):
        return None
    return [_as_numpy(v) for v in tensors]


def _as_numpy(v) -> np.ndarray:
    """A torch tensor or array-like as a numpy array (torch itself is not imported)."""
    return np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)


def _model_threads(threads) -> int:
    from .runtime.executable import default_threads
    env = os.environ.get("EMBER_NUM_THREADS", "").strip()
    return threads or (int(env) if env.isdigit() and int(env) > 0 else default_threads())


def _symbol_values(graph, arrays) -> dict:
    """Symbol name -> the example inputs' value for it (where a dim is a bare symbol)."""
    env: dict = {}
    for v, a in zip(graph.inputs, arrays or []):
        for d, n in zip(v.shape, np.shape(a)):
            if not isinstance(d, int) and len(getattr(d, "terms", {})) == 1:
                from .ir.symbolic import free_symbols
                syms = free_symbols(d)
                if len(syms) == 1 and str(d) == next(iter(syms)):
                    env.setdefault(next(iter(syms)), int(n))
    return env


def _signature(args) -> tuple:
    return tuple((tuple(np.shape(a)), str(getattr(a, "dtype", type(a)))) for a in args)


class InferenceEngine:
    """The simple face: ``engine.run_inference(model, x)`` compiles on first use, then reuses.

    Compiled models are cached per model object and input signature (shapes and dtypes).
    """

    def __init__(self, **compile_options):
        self.compile_options = compile_options
        self._cache: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self.compilations = 0

    def get_compiled(self, model, *inputs) -> CompiledModel:
        sig = _signature(inputs)
        with self._lock:
            per_model = self._cache.setdefault(model, {})
            cm = per_model.get(sig)
            if cm is None:
                cm = compile(model, tuple(inputs), **self.compile_options)
                per_model[sig] = cm
                self.compilations += 1
        return cm

    def run_inference(self, model, *inputs):
        """Run ``model`` on ``inputs`` with Ember; same result types as the model would give."""
        return self.get_compiled(model, *inputs)(*inputs)


__all__ = ["CompiledModel", "InferenceEngine", "compile", "load"]
