"""Compile-time layouts for constant GEMM operands.

A weight B[K, N] is stored as panels of ``nr`` columns, ``Bp[j // nr, k, j % nr]`` with
zeros past N, the order in which the CPU micro-kernel reads it (one contiguous stream per
panel, any K block is a contiguous slice). The packed array is an ordinary constant of the
Program, so saved artifacts carry it like any other.
"""
from __future__ import annotations

import numpy as np

PANEL = 16  # columns per panel: two AVX2 vectors of float32


def pack_panels(b: np.ndarray, nr: int = PANEL) -> np.ndarray:
    """[K, N] -> [ceil(N / nr), K, nr], zero-padded.

    >>> pack_panels(np.ones((3, 20), np.float32)).shape
    (2, 3, 16)
    """
    k, n = b.shape
    npan = -(-n // nr)
    out = np.zeros((npan, k, nr), dtype=b.dtype)
    full = n // nr
    if full:
        out[:full] = b[:, :full * nr].reshape(k, full, nr).transpose(1, 0, 2)
    if n % nr:
        out[full, :, :n % nr] = b[:, full * nr:]
    return out


def unpack_panels(p: np.ndarray, n: int) -> np.ndarray:
    """The inverse of ``pack_panels``: [npan, K, nr] -> [K, n]."""
    npan, k, nr = p.shape
    return p.transpose(1, 0, 2).reshape(k, npan * nr)[:, :n]
