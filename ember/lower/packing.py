"""Layouts of fp32 GEMM operands: constant weights packed at compile time, images read as im2col.

A weight B[K, N] is stored as panels of ``nr`` columns, ``Bp[j // nr, k, j % nr]`` with
zeros past N, the order in which the CPU micro-kernel reads it (one contiguous stream per
panel, any K block is a contiguous slice). The packed array is an ordinary constant of the
Program, so saved artifacts carry it like any other.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .loop_ir import Operand

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


@dataclass
class ImageOperand(Operand):
    """The B operand of a convolution's GEMM, read straight from the image (implicit im2col).

    ``B[k, j] = x[c, ho*sh + rh*dh - ph, wo*sw + rw*dw - pw]`` (zero outside the image) with
    ``k = (c, rh, rw)`` and ``j = (ho, wo)``: the im2col matrix of one image, which the GEMM
    packs into its panels per task instead of a gather kernel writing it out and the GEMM
    reading it back. ``buf``/``offset`` locate image 0 of an NCHW tensor; ``strides[0]`` is
    the image stride. ``geom`` = (C, H, W, KH, KW, Wo, (sh, sw), (ph, pw), (dh, dw)).
    """
    geom: tuple = ()
