"""Where a compiled model spends its time, kernel by kernel (numpy only).

The generated entry point times each kernel call while a buffer is set
(``ember_set_profile``; backends/cpu/codegen.py) and carries each kernel's label (its form
and the graph nodes fused into it) and, for GEMM-like kernels, its flop count as a function
of the input dims. ``profile_kernels`` runs the model, reads the per-call times and reports
medians, so a reader sees which kernel to work on and how close it runs to the machine.

>>> print(compiled.profile(x, runs=50))
"""
from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass

import numpy as np

from ..errors import EmberError


@dataclass
class KernelTime:
    label: str        # "k2 gemm: linear %1 + gelu %2"
    seconds: float    # median wall time of one call of this kernel
    flops: float      # 2 x multiply-adds of a GEMM / attention kernel at these shapes; 0 otherwise

    @property
    def gflops(self) -> float | None:
        return self.flops / self.seconds / 1e9 if self.flops and self.seconds > 0 else None


@dataclass
class KernelProfile:
    kernels: list[KernelTime]   # in program order
    call_seconds: float         # median wall time of the whole call, as Python sees it
    runs: int

    @property
    def kernel_seconds(self) -> float:
        return sum(k.seconds for k in self.kernels)

    def top(self, n: int = 10) -> list[KernelTime]:
        return sorted(self.kernels, key=lambda k: -k.seconds)[:n]

    def by_form(self) -> dict[str, float]:
        """Seconds per kernel form (gemm, attention, row, pointwise, ...), largest first."""
        out: dict[str, float] = {}
        for k in self.kernels:
            form = k.label.split(":")[0].split(" ")[1]
            out[form] = out.get(form, 0.0) + k.seconds
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def table(self, n: int | None = 15) -> str:
        from ..timing import fmt_time
        total = self.kernel_seconds or 1.0
        rows = self.kernels if n is None else self.top(n)
        width = max([len(k.label) for k in rows] + [6])
        lines = [f"{'kernel':<{width}} {'median':>10} {'share':>6} {'GFLOP/s':>8}"]
        for k in rows:
            g = f"{k.gflops:.1f}" if k.gflops is not None else "-"
            lines.append(f"{k.label:<{width}} {fmt_time(k.seconds):>10} {100 * k.seconds / total:5.1f}% {g:>8}")
        if n is not None and len(self.kernels) > n:
            rest = sum(k.seconds for k in self.kernels) - sum(k.seconds for k in rows)
            lines.append(f"{f'({len(self.kernels) - n} more kernels)':<{width}} {fmt_time(rest):>10} "
                         f"{100 * rest / total:5.1f}%")
        forms = ", ".join(f"{f} {100 * s / total:.0f}%" for f, s in self.by_form().items())
        lines.append(f"kernels {fmt_time(self.kernel_seconds)} of a {fmt_time(self.call_seconds)} call "
                     f"(medians of {self.runs} runs); by form: {forms}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def profile_kernels(native, arrays, runs: int = 50, warmup: int = 3) -> KernelProfile:
    """Run ``native`` (a NativeModule) ``runs`` times on numpy ``arrays``, timing each kernel.

    Calls of the same model from other threads meanwhile (a server) run unharmed, but add
    their times to this profile: the timing buffer is one per library."""
    lib = native.lib
    if not hasattr(lib, "ember_set_profile"):
        raise EmberError("this model's library was built before Ember could profile kernels; "
                         "rebuild it (ember.load(path, rebuild=True)) to profile it")
    if runs < 1:
        raise EmberError(f"runs must be at least 1, got {runs}")
    lib.ember_set_profile.argtypes = [ctypes.c_void_p]
    lib.ember_profile_label.restype = ctypes.c_char_p
    lib.ember_profile_label.argtypes = [ctypes.c_int]
    lib.ember_profile_flops.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    n = lib.ember_profile_count()
    labels = [lib.ember_profile_label(i).decode() for i in range(n)]
    arrays = native._as_arrays(arrays)
    native._count(len(arrays))
    st = native._state(tuple(a.shape for a in arrays))
    flops = np.zeros(max(n, 1))
    lib.ember_profile_flops(st.dims_addr, flops.ctypes.data)
    for _ in range(warmup):
        native.run(arrays)
    # the buffer lives as long as the library: a concurrent call that saw it set may still add
    # to it after profiling is turned off
    acc = getattr(native, "_profile_seconds", None)
    if acc is None or len(acc) < max(n, 1):
        acc = native._profile_seconds = np.zeros(max(n, 1))
    per_kernel, wall = np.empty((runs, n)), np.empty(runs)
    lib.ember_set_profile(acc.ctypes.data)
    try:
        for r in range(runs):
            acc[:] = 0.0
            t0 = time.perf_counter()
            native.run(arrays)
            wall[r] = time.perf_counter() - t0
            per_kernel[r] = acc[:n]
    finally:
        lib.ember_set_profile(None)
    med = np.median(per_kernel, axis=0) if n else []
    kernels = [KernelTime(labels[i], float(med[i]), float(flops[i])) for i in range(n)]
    return KernelProfile(kernels, float(np.median(wall)), runs)
