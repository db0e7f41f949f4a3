"""The saved model: a folder that runs with numpy alone.

    model.ember/
      manifest.json        Ember version, inputs/outputs (names, dtypes, symbolic shapes,
                           ranges), the CPU features the library needs, sha256 of every file
      model.so             the compiled library (C API: model.h, docs/c_api.md)
      weights.safetensors  constants, memory-mapped at load
      model.ir             the optimized graph as text: lets ember.load(rebuild=True) recompile
      model.c, model.h     the generated C and its header, for C users and for reading

A folder rather than one archive because the library and the weights are then used in
place: weights are memory-mapped (several server processes share one copy in the page
cache) and a C program needs nothing but the folder. Nothing in it is pickle.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import ArtifactError
from . import c_header, safetensors_io, target
from .executable import NativeModule, TensorSpec

FORMAT, FORMAT_VERSION, ABI_VERSION = "ember-artifact", 2, 1  # 2: derived and unused constants
MANIFEST, LIBRARY, WEIGHTS, IR, SOURCE, HEADER = (
    "manifest.json", "model.so", "weights.safetensors", "model.ir", "model.c", "model.h")
_NATIVE_PREFIX = "ember.native."  # runtime constants that lowering changed (packed layouts)


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------- saving

def _digest(a: np.ndarray) -> tuple:
    a = np.ascontiguousarray(a)
    return a.dtype.str, a.shape, hashlib.blake2b(a.view(np.uint8).reshape(-1)).digest()


def used_consts(source: str) -> set[int] | None:
    """Indices of the runtime constants the library reads: ember_main binds each one it
    uses as ``cK = consts[K]`` (backends/cpu/codegen.py). None without the C source."""
    return {int(k) for k in re.findall(r"= consts\[(\d+)\]", source)} if source else None


def _tensors(compiled) -> tuple[dict, list, dict]:
    """What the weights file holds: tensors by name; for each runtime constant, the tensor
    that holds it (None: the library never reads it); and the graph constants left out
    because they can be recomputed from a stored one (``derived``).

    A weight the GEMM reads pre-packed would otherwise be stored twice, once as the graph's
    constant (for the IR) and once in its packed layout (for the library): the graph's copy
    is recomputed from the packed one at load instead (lower/packing.py: ``unpack_panels``).
    """
    from ..lower.packing import PANEL, pack_panels
    used = used_consts(compiled.source)
    graph = {c.name: np.ascontiguousarray(c.data) for c in compiled.graph.constants if c.data is not None}
    by_content = {}
    for name, a in graph.items():
        by_content.setdefault(_digest(a), name)
    tensors, runtime = {}, []
    for k, a in enumerate(compiled.native.consts):
        if used is not None and k not in used:
            runtime.append((None, a))
            continue
        key = _digest(a)
        name = by_content.get(key) or f"{_NATIVE_PREFIX}{k}"
        tensors[name] = np.ascontiguousarray(a)
        runtime.append((name, a))
    packed = {_digest(a): n for n, a in tensors.items()
              if n.startswith(_NATIVE_PREFIX) and a.ndim == 3 and a.shape[2] == PANEL}
    derived = {}
    for name, a in graph.items():
        if name in tensors:
            continue
        if a.ndim == 2 and packed:  # a linear weight [N, K] packs as B = W^T, a matmul's as is
            for transpose, b in ((True, a.T), (False, a)):
                src = packed.get(_digest(pack_panels(np.ascontiguousarray(b), PANEL)))
                if src is not None:
                    derived[name] = {"from": src, "n": int(b.shape[1]), "transpose": transpose}
                    break
        if name not in derived:
            tensors[name] = a
    return tensors, runtime, derived


def _target_info() -> dict:
    from ..backends.cpu import toolchain  # needs the compiler only when saving
    cc = toolchain.find_compiler()
    h = target.host()
    return {"arch": h["arch"], "cpu": h["cpu"], "march": "native",
            "features": target.native_features(cc), "compiler": toolchain.compiler_id(cc),
            "flags": list(toolchain.FLAGS)}


def _spec_json(s: TensorSpec) -> dict:
    return {"name": s.name, "dtype": s.dtype, "shape": list(s.shape)}


def build_manifest(compiled, weights_header: dict, runtime, files: dict, has_ir: bool,
                   derived: dict | None = None) -> dict:
    native = compiled.native
    ranges = {s: list(native.sym_ranges[s]) if s in native.sym_ranges else None
              for s in native.symbols}
    data_bytes = max((e for v in weights_header.values() if "data_offsets" in v
                      for e in v["data_offsets"][1:]), default=0)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "ember_version": __version__,
        "abi_version": ABI_VERSION, "name": compiled.graph.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": [_spec_json(s) for s in native.inputs],
        "outputs": [_spec_json(s) for s in native.outputs],
        "symbols": list(native.symbols), "dims": ranges,
        "target": _target_info(),
        # "tensor": None = the library never reads it (offset 0: any valid address will do)
        "consts": [{"tensor": n, "dtype": a.dtype.str, "shape": list(a.shape),
                    "offset": weights_header[n]["data_offsets"][0] if n else 0} for n, a in runtime],
        "derived": derived or {},
        # the example sizes of symbolic dims, by which compile chose kernel forms: a rebuild keeps them
        "size_hints": dict(getattr(compiled, "size_hints", None) or {}),
        "weights_data_bytes": data_bytes, "has_ir": has_ir, "files": files,
    }


def save_model(compiled, path, *, include_ir: bool = True) -> Path:
    """Write ``compiled`` as an artifact folder at ``path`` (replaced atomically if it is one).

    >>> save_model(ember.compile(model, (x,)), "model.ember")
    PosixPath('model.ember')
    """
    from ..ir import print_graph
    path = Path(path)
    if path.exists() and not (path.is_dir() and ((path / MANIFEST).exists() or not any(path.iterdir()))):
        raise ArtifactError(f"{path} exists and is not an Ember artifact; not overwriting it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tensors, runtime, derived = _tensors(compiled)
        if not include_ir:   # nothing reads the graph's own copies then
            tensors = {n: a for n, a in tensors.items() if n in {r for r, _ in runtime if r}}
            derived = {}
        meta = {"format": FORMAT, "ember_version": __version__}
        header_bytes, _ = safetensors_io.encode_header(tensors, meta)
        safetensors_io.save(tensors, tmp / WEIGHTS, meta)
        weights_header = json.loads(header_bytes)
        shutil.copyfile(compiled.native.lib_path, tmp / LIBRARY)
        (tmp / SOURCE).write_text(compiled.source)
        if include_ir:
            (tmp / IR).write_text(print_graph(compiled.graph) + "\n")
        files = {}
        manifest = build_manifest(compiled, weights_header, runtime, files, include_ir, derived)
        (tmp / HEADER).write_text(c_header.render(manifest))
        for name in (LIBRARY, WEIGHTS, IR, SOURCE, HEADER):
            if (tmp / name).exists():
                files[name] = {"sha256": sha256_file(tmp / name), "size": (tmp / name).stat().st_size}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(tmp, 0o755)
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _swap_in(tmp: Path, path: Path) -> None:
    """Put the finished folder at ``path``; a reader sees the old artifact or the new one."""
    if not path.exists():
        os.rename(tmp, path)
        return
    old = path.with_name(f".{path.name}.old-{os.getpid()}-{time.monotonic_ns()}")
    os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------- loading

def read_manifest(path) -> dict:
    """The manifest of the artifact at ``path``, checked for format and version.

    >>> read_manifest("model.ember")["inputs"][0]["name"]
    'x'
    """
    path = Path(path)
    if not path.is_dir() or not (path / MANIFEST).is_file():
        what = "does not exist" if not path.exists() else "is not an Ember artifact folder"
        raise ArtifactError(f"{path} {what} (expected a folder with {MANIFEST}, written by "
                            f"CompiledModel.save or `ember compile -o`)")
    try:
        m = json.loads((path / MANIFEST).read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise ArtifactError(f"{path / MANIFEST} is corrupted: not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ArtifactError(f"{path / MANIFEST} is not an Ember artifact manifest")
    if not isinstance(m.get("format_version"), int) or m["format_version"] > FORMAT_VERSION:
        raise ArtifactError(f"{path} uses artifact format {m.get('format_version')!r}, newer than "
                            f"this Ember ({__version__}) reads ({FORMAT_VERSION}); upgrade Ember")
    need = ("ember_version", "inputs", "outputs", "symbols", "dims", "target", "consts", "files")
    missing = [k for k in need if k not in m]
    if missing:
        raise ArtifactError(f"{path / MANIFEST} is corrupted: missing {', '.join(missing)}")
    return m


def _check_files(path: Path, m: dict, skip=()) -> None:
    for name in (LIBRARY, WEIGHTS):
        if name not in m["files"]:
            raise ArtifactError(f"{path / MANIFEST} lists no {name}")
    for name, info in m["files"].items():
        if name in skip:
            continue
        f = path / name
        if os.sep in name or name.startswith(".") or not f.is_file():
            raise ArtifactError(f"{path}: {name} is missing")
        if f.stat().st_size != info.get("size") or sha256_file(f) != info.get("sha256"):
            fix = (" ember.load(path, rebuild=True) recompiles it from the IR."
                   if name == LIBRARY and IR in m["files"] else "")
            raise ArtifactError(f"{f} was changed or corrupted: its sha256 does not match the "
                                f"manifest; refusing to load it.{fix}")


def _rebuild_hint(m: dict) -> str:
    if IR in m["files"]:
        return "ember.load(path, rebuild=True) recompiles it for this machine from its IR"
    return "this artifact has no IR, so compile the model again from its source"


def _check_target(path: Path, m: dict) -> None:
    if m["ember_version"] != __version__:
        raise ArtifactError(f"{path} was built by Ember {m['ember_version']}; this is Ember "
                            f"{__version__}, and libraries are not carried across versions. "
                            f"{_rebuild_hint(m)}")
    t, h = m["target"], target.host()
    if t.get("arch") != h["arch"]:
        raise ArtifactError(f"{path} was built for {t.get('arch')}, this machine is {h['arch']}; "
                            f"{_rebuild_hint(m)}")
    lacking = target.missing_features(t.get("features", []))
    if lacking:
        raise ArtifactError(f"{path} was built for a CPU with {', '.join(lacking)} "
                            f"({t.get('cpu') or 'unknown CPU'}), which this CPU "
                            f"({h['cpu'] or 'unknown'}) lacks; running it would crash with an "
                            f"illegal instruction. {_rebuild_hint(m)}")


def _library_copy(path: Path, sha: str) -> Path:
    """The library at a path named by its content: the dynamic loader reuses a library by
    path, so loading a replaced artifact from the same folder must not get the old code."""
    from . import cache
    try:
        dst = cache.entry(sha, ".so")
    except OSError:  # read-only home: fall back to the temp dir
        d = Path(tempfile.gettempdir()) / "ember-artifacts"
        d.mkdir(exist_ok=True)
        dst = d / f"{sha}.so"
    if not dst.exists() or sha256_file(dst) != sha:
        cache.atomic_write(dst, (path / LIBRARY).read_bytes())
    return dst


def _specs(items) -> list[TensorSpec]:
    return [TensorSpec(s["name"], s["dtype"], list(s["shape"])) for s in items]


def _derived(path: Path, derived: dict, tensors: dict) -> dict:
    """The graph constants the artifact stores only in their packed GEMM layout."""
    from ..lower.packing import unpack_panels
    out = {}
    for name, d in derived.items():
        src = tensors.get(d.get("from"))
        if src is None or src.ndim != 3:
            raise ArtifactError(f"{path / MANIFEST}: constant {name!r} is derived from "
                                f"{d.get('from')!r}, which {WEIGHTS} does not hold as packed panels")
        b = unpack_panels(src, int(d["n"]))
        out[name] = np.ascontiguousarray(b.T if d.get("transpose") else b)
    return out


def _graph(path: Path, m: dict, tensors: dict):
    from ..ir import Graph, TensorType, Value, dtypes, parse, parse_dim
    if IR in m["files"]:
        consts = {k: v for k, v in tensors.items() if not k.startswith(_NATIVE_PREFIX)}
        consts.update(_derived(path, m.get("derived", {}), tensors))
        g = parse((path / IR).read_text(), consts)
    else:  # no IR: a graph with the right inputs and outputs only, for names and types
        g = Graph(m.get("name", "main"))
        dims = lambda s: tuple(d if isinstance(d, int) else parse_dim(d) for d in s["shape"])  # noqa: E731
        for s in m["inputs"]:
            g.add_input(s["name"], TensorType(dtypes.parse(s["dtype"]), dims(s)))
        g.outputs = [Value(s["name"], TensorType(dtypes.parse(s["dtype"]), dims(s)))
                     for s in m["outputs"]]
    g.output_names = [s["name"] for s in m["outputs"]]
    g.sym_ranges = {s: tuple(r) for s, r in m["dims"].items() if r is not None}
    return g


def load_model(path, rebuild: bool = False):
    """Load an artifact folder; ``rebuild=True`` recompiles its IR for this machine and Ember.

    >>> model = load_model("model.ember")
    >>> y = model(np.ones((2, 16), np.float32))
    """
    from ..api import CompiledModel
    path = Path(path)
    m = read_manifest(path)
    if rebuild and IR not in m["files"]:
        raise ArtifactError(f"{path} has no IR ({IR}), so it cannot be rebuilt; compile the model "
                            f"again from its source")
    _check_files(path, m, skip=(LIBRARY,) if rebuild else ())
    tensors = safetensors_io.load(path / WEIGHTS)
    graph = _graph(path, m, tensors)
    hints = {k: int(v) for k, v in (m.get("size_hints") or {}).items()}
    if rebuild:
        model = _rebuild(path, graph, hints)
        model.size_hints = hints
        return model
    _check_target(path, m)
    consts = []
    for c in m["consts"]:
        if c["tensor"] is None:   # never read by the library: a placeholder address
            consts.append(np.zeros(1, np.uint8))
            continue
        if c["tensor"] not in tensors:
            raise ArtifactError(f"{path / WEIGHTS} has no tensor {c['tensor']!r}")
        consts.append(tensors[c["tensor"]].reshape(c["shape"]))
    lib = _library_copy(path, m["files"][LIBRARY]["sha256"])
    native = NativeModule(lib, list(m["symbols"]), _specs(m["inputs"]), _specs(m["outputs"]),
                          consts, graph.sym_ranges)
    abi = getattr(native.lib, "ember_abi_version", None)
    if abi is not None and abi() != m.get("abi_version", ABI_VERSION):
        raise ArtifactError(f"{path / LIBRARY} speaks C ABI {abi()}, the manifest says "
                            f"{m.get('abi_version')}; {_rebuild_hint(m)}")
    source = (path / SOURCE).read_text() if SOURCE in m["files"] else ""
    model = CompiledModel(graph, source, native, f"loaded from {path}")
    model.size_hints = hints
    return model


def _rebuild(path: Path, graph, hints: dict):
    """The saved (optimized) graph compiled again, with the kernel fusion and memory plan of
    ``ember.compile`` and the kernel forms it chose (``hints``)."""
    from ..api import CompiledModel, build_graph
    from ..ir import verify
    verify(graph)
    native, source = build_graph(graph, hints)
    return CompiledModel(graph, source, native, f"rebuilt from {path / IR}")
