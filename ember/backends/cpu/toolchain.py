"""The system C compiler: find it, build a shared library, cache the result."""
from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from ... import __version__
from ...errors import CompileError, CompilerNotFoundError
from ...runtime import cache

# -ffast-math lets gcc reassociate reductions and call vector math; finite-math stays off
# because masks and padding use infinities.
FLAGS = ("-O3", "-march=native", "-fPIC", "-fopenmp", "-ffast-math",
         "-fno-finite-math-only", "-std=gnu11")
# Linked in a separate step without -ffast-math: gcc would otherwise add crtfastmath.o, whose
# constructor turns on flush-to-zero for the whole process (the user's numpy included).
LINK_FLAGS = ("-shared", "-fopenmp")

MAX_UNITS = 8   # translation units per program at most: each one parses the shared helpers again
stats = {"compiles": 0, "cache_hits": 0, "objects": 0}  # observed by tests that count compilations


def find_compiler() -> str:
    """$CC, else gcc, else cc on PATH; CompilerNotFoundError with advice if none."""
    cand = [os.environ["CC"]] if os.environ.get("CC") else ["gcc", "cc", "clang"]
    for c in cand:
        path = shutil.which(c)
        if path:
            return path
    raise CompilerNotFoundError(
        f"no C compiler found (looked for {', '.join(cand)} on PATH). Ember generates C and "
        "needs one to build it: install gcc (e.g. `apt-get install gcc`) or set $CC to a compiler.")


@functools.lru_cache(maxsize=8)
def compiler_id(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except OSError as e:
        raise CompilerNotFoundError(f"C compiler {cc} cannot run: {e}") from e
    return out.splitlines()[0] if out else cc


@functools.lru_cache(maxsize=1)
def cpu_id() -> str:
    """What -march=native means here: the machine and its feature flags."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()} {flags}"


def objects_for(source: str, cc: str, flags: tuple) -> list[Path]:
    """Objects a program's source links besides its own: the GEMM micro-kernels where the
    source says it calls them (``gemm.LINK_MARK``), built once per compiler, flags and CPU."""
    from . import gemm
    if gemm.LINK_MARK not in source:
        return []
    ukr = gemm.ukr_source()
    k = cache.key(ukr, " ".join(flags), compiler_id(cc), cpu_id(), __version__)
    obj = cache.entry(k, ".o")
    if not obj.exists():
        with tempfile.TemporaryDirectory(prefix="ember-ukr-") as tmp:
            src, out = Path(tmp) / "ukr.c", Path(tmp) / "ukr.o"
            src.write_text(ukr)
            proc = subprocess.run([cc, *flags, "-c", str(src), "-o", str(out)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise CompileError(f"the C compiler rejected Ember's GEMM micro-kernels (an Ember bug; "
                                   f"please report it):\n{proc.stderr[-4000:]}")
            stats["objects"] += 1
            cache.atomic_write(obj, out.read_bytes())
    return [obj]


def split_units(source: str, n: int) -> list[str]:
    """``source`` as at most ``n`` translation units of about equal size: the shared helpers
    (everything before the first ``codegen.UNIT`` mark) head each one, the kernels after the
    marks are dealt out by size, the entry points join the first. The kernels are then
    hidden rather than static, so that the entry points link to them."""
    from .codegen import UNIT
    parts = source.split(UNIT)
    if n < 2 or len(parts) < 3:
        return [source]
    head, kernels, main = parts[0], parts[1:-1], parts[-1]
    groups = [[] for _ in range(min(n, len(kernels)))]
    sizes = [0] * len(groups)
    for k in sorted(kernels, key=len, reverse=True):
        g = sizes.index(min(sizes))
        groups[g].append(k)
        sizes[g] += len(k)
    groups[0].append(main)
    hidden = '#define EMBER_KERNEL __attribute__((visibility("hidden")))\n'
    return [hidden + head + "".join(g) for g in groups]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def build(source: str, extra_flags: tuple = ()) -> Path:
    """Compile C ``source`` into a shared library (cached); returns its path. Its kernels
    compile as one translation unit per core, in parallel, with the GEMM micro-kernels'
    object found or built meanwhile."""
    cc = find_compiler()
    flags = FLAGS + tuple(extra_flags)
    k = cache.key(source, " ".join(flags + LINK_FLAGS), compiler_id(cc), cpu_id(), __version__)
    so = cache.entry(k, ".so")
    if so.exists():
        stats["cache_hits"] += 1
        return so
    with tempfile.TemporaryDirectory(prefix="ember-build-") as tmp:
        out, jobs = Path(tmp) / "model.so", []
        for i, unit in enumerate(split_units(source, min(_cores(), MAX_UNITS))):
            src, obj = Path(tmp) / f"model{i}.c", Path(tmp) / f"model{i}.o"
            src.write_text(unit)
            jobs.append((obj, subprocess.Popen([cc, *flags, "-c", str(src), "-o", str(obj)],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)))
        try:
            extra = objects_for(source, cc, flags)
        finally:
            stderrs = [job.communicate()[1] for _, job in jobs]
        errors = [err for (_, job), err in zip(jobs, stderrs) if job.returncode]
        if not errors:
            link = subprocess.run([cc, *LINK_FLAGS, *(str(o) for o, _ in jobs), *map(str, extra),
                                   "-o", str(out), "-lm"], capture_output=True, text=True)
            errors = [link.stderr] if link.returncode else []
        if errors:
            keep = cache.entry(k, ".failed.c")
            keep.write_text(source)
            raise CompileError(f"the C compiler rejected generated code (an Ember bug; please "
                               f"report it with {keep}):\n{errors[0][-4000:]}")
        stats["compiles"] += 1
        cache.atomic_write(so, out.read_bytes())
        cache.atomic_write(cache.entry(k, ".c"), source.encode())
    return so
