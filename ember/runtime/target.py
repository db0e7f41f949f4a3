"""Which CPU features a library built with ``-march=native`` relies on, and whether this
machine has them.

At save time the C compiler tells what ``-march=native`` turned on (its predefined ISA
macros); at load time /proc/cpuinfo tells what this CPU has. Loading needs no compiler.
"""
from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

# gcc/clang ISA macro -> the /proc/cpuinfo flag that says the CPU has it. Only ISA
# extensions that generated code can use are listed; the rest do not change the binary.
_X86 = {
    "__SSE3__": "pni", "__SSSE3__": "ssse3", "__SSE4_1__": "sse4_1", "__SSE4_2__": "sse4_2",
    "__POPCNT__": "popcnt", "__AVX__": "avx", "__AVX2__": "avx2", "__FMA__": "fma",
    "__F16C__": "f16c", "__BMI__": "bmi1", "__BMI2__": "bmi2", "__LZCNT__": "abm",
    "__MOVBE__": "movbe", "__AVX512F__": "avx512f", "__AVX512CD__": "avx512cd",
    "__AVX512DQ__": "avx512dq", "__AVX512BW__": "avx512bw", "__AVX512VL__": "avx512vl",
    "__AVX512IFMA__": "avx512ifma", "__AVX512VBMI__": "avx512vbmi",
    "__AVX512VBMI2__": "avx512_vbmi2", "__AVX512VNNI__": "avx512_vnni",
    "__AVX512BITALG__": "avx512_bitalg", "__AVX512VPOPCNTDQ__": "avx512_vpopcntdq",
    "__AVX512BF16__": "avx512_bf16", "__AVX512FP16__": "avx512_fp16",
    "__AVXVNNI__": "avx_vnni", "__GFNI__": "gfni", "__VAES__": "vaes",
    "__VPCLMULQDQ__": "vpclmulqdq", "__AMX_TILE__": "amx_tile", "__AMX_INT8__": "amx_int8",
    "__AMX_BF16__": "amx_bf16",
}
_ARM = {"__ARM_NEON": "asimd", "__ARM_FEATURE_FMA": "fp", "__ARM_FEATURE_SVE": "sve",
        "__ARM_FEATURE_SVE2": "sve2", "__ARM_FEATURE_DOTPROD": "asimddp",
        "__ARM_FEATURE_FP16_VECTOR_ARITHMETIC": "asimdhp", "__ARM_FEATURE_BF16": "bf16",
        "__ARM_FEATURE_MATMUL_INT8": "i8mm"}


def _cpuinfo() -> tuple[set[str], str]:
    flags, model = set(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            key = key.strip()
            if key in ("flags", "Features") and not flags:
                flags = set(val.split())
            elif key in ("model name", "CPU part") and not model:
                model = val.strip()
    except OSError:
        pass
    return flags, model


@functools.lru_cache(maxsize=1)
def host() -> dict:
    """This machine: ``{"arch", "cpu", "flags"}`` (flags as /proc/cpuinfo spells them)."""
    flags, model = _cpuinfo()
    return {"arch": platform.machine(), "cpu": model, "flags": flags}


@functools.lru_cache(maxsize=8)
def native_features(cc: str, march: str = "native") -> list[str]:
    """CPU features ``cc -march=<march>`` lets generated code use, as cpuinfo flag names.

    >>> native_features("gcc")[:3]
    ['abm', 'avx', 'avx2']
    """
    proc = subprocess.run([cc, f"-march={march}", "-dM", "-E", "-x", "c", "/dev/null"],
                          capture_output=True, text=True, timeout=60)
    table = _ARM if platform.machine() in ("aarch64", "arm64") else _X86
    macros = {ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("#define ")}
    return sorted({flag for m, flag in table.items() if m in macros})


def missing_features(required: list[str]) -> list[str]:
    """The features in ``required`` this CPU lacks (empty when /proc/cpuinfo is unreadable,
    since then nothing can be checked and the library is given the benefit of the doubt)."""
    have = host()["flags"]
    if not have:
        return []
    return [f for f in required if f not in have]
