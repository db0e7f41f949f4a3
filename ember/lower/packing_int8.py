"""Compile-time layout of a constant integer GEMM weight (the int8 GEMM, backends/cpu/gemm_int8.py).

A weight W[N, K] (output channels first, as ``quant_linear`` keeps it) is stored as panels of
16 columns whose K is walked in groups of ``g`` (4 for the u8 x s8 route, 2 for the int16
route): ``Bp[j // 16, k // g, j % 16, k % g]``, zero-padded past N and past K. One group of
one panel is 16 x g contiguous values, the operand of two 8-column AVX2 multiply-adds, so
the micro-kernel streams each panel front to back.
"""
from __future__ import annotations

import numpy as np

PANEL = 16  # columns per panel: two AVX2 vectors of 8 int32 accumulators


def pack_groups(w: np.ndarray, g: int, dtype=np.int8) -> np.ndarray:
    """[N, K] -> [ceil(N / 16), ceil(K / g), 16, g] of ``dtype``, zero-padded.

    >>> pack_groups(np.ones((20, 3), np.int8), 2).shape
    (2, 2, 16, 2)
    """
    n, k = w.shape
    npan, kg = -(-n // PANEL), -(-k // g)
    full = np.zeros((npan * PANEL, kg * g), dtype)
    full[:n, :k] = w
    return np.ascontiguousarray(full.reshape(npan, PANEL, kg, g).transpose(0, 2, 1, 3))


def unpack_groups(p: np.ndarray, n: int, k: int) -> np.ndarray:
    """The inverse of ``pack_groups``: [npan, kg, 16, g] -> [n, k]."""
    npan, kg, _, g = p.shape
    return p.transpose(0, 2, 1, 3).reshape(npan * PANEL, kg * g)[:n, :k]
