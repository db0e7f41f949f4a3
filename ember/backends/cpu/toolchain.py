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

stats = {"compiles": 0, "cache_hits": 0}  # observed by tests that count compilations


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


def build(source: str, extra_flags: tuple = ()) -> Path:
    """Compile C ``source`` into a shared library (cached); returns its path."""
    cc = find_compiler()
    flags = FLAGS + tuple(extra_flags)
    k = cache.key(source, " ".join(flags + LINK_FLAGS), compiler_id(cc), cpu_id(), __version__)
    so = cache.entry(k, ".so")
    if so.exists():
        stats["cache_hits"] += 1
        return so
    with tempfile.TemporaryDirectory(prefix="ember-build-") as tmp:
        src, obj, out = Path(tmp) / "model.c", Path(tmp) / "model.o", Path(tmp) / "model.so"
        src.write_text(source)
        proc = subprocess.run([cc, *flags, "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
        if proc.returncode == 0:
            proc = subprocess.run([cc, *LINK_FLAGS, str(obj), "-o", str(out), "-lm"],
                                  capture_output=True, text=True)
        if proc.returncode != 0:
            keep = cache.entry(k, ".failed.c")
            keep.write_text(source)
            raise CompileError(f"the C compiler rejected generated code (an Ember bug; please "
                               f"report it with {keep}):\n{proc.stderr[-4000:]}")
        stats["compiles"] += 1
        cache.atomic_write(so, out.read_bytes())
        cache.atomic_write(cache.entry(k, ".c"), source.encode())
    return so
