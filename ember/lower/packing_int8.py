"""Compile-time layout of a constant integer GEMM weight (the int8 GEMM, backends/cpu/gemm_int8.py).

A weight W[N, K] (output channels first, as ``quant_linear`` keeps it) is stored as panels of
16 columns whose K is walked in *pairs*: ``Bp[j // 16, k // 2, j % 16, k % 2]``, zero-padded
past N and past K (K rounded up to even). One k-pair of one panel is 16 x 2 contiguous
values: the operand of two ``vpmaddwd`` (8 columns x 2 k each) after sign extension. The
values are kept in int8 when they fit (half the bytes to stream) and in int16 otherwise (a
u8 weight minus its zero point, from ONNX MatMulInteger).
"""
from __future__ import annotations

import numpy as np

PANEL = 16  # columns per panel: two AVX2 vectors of 8 int32 accumulators


def pack_pairs(w: np.ndarray, dtype=np.int8) -> np.ndarray:
    """[N, K] -> [ceil(N / 16), ceil(K / 2), 16, 2] of ``dtype``, zero-padded.

    >>> pack_pairs(np.ones((20, 3), np.int8)).shape
    (2, 2, 16, 2)
    """
    n, k = w.shape
    npan, kp = -(-n // PANEL), -(-k // 2)
    full = np.zeros((npan * PANEL, kp * 2), dtype)
    full[:n, :k] = w
    return np.ascontiguousarray(full.reshape(npan, PANEL, kp, 2).transpose(0, 2, 1, 3))


def unpack_pairs(p: np.ndarray, n: int, k: int) -> np.ndarray:
    """The inverse of ``pack_pairs``: [npan, kp, 16, 2] -> [n, k]."""
    npan, kp = p.shape[:2]
    return p.transpose(0, 2, 1, 3).reshape(npan * PANEL, kp * 2)[:n, :k]
