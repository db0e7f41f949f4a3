"""Winograd convolution F(4x4, 3x3): a 3x3 stride-1 conv2d as 36 GEMMs on transformed tiles.

Each 4x4 block of output pixels (a tile) comes from a 6x6 patch of the input. With the
transform matrices below (Lavin & Gray's F(4, 3), interpolation points 0, +-1, +-2, +-1/2),

    out_tile[o] = A^T ( sum_c U[o, c] * V[c] ) A,   U = G g G^T (6x6),   V = B^T d B (6x6),

and the sum over input channels at each of the 36 positions p of the 6x6 is a matrix
product: M[p] (T x O) = V[p] (T x C) @ U[p]^T (C x O) over all T tiles. That is 36 * O * C * T
multiply-adds against the direct convolution's 144 (9 taps x 16 pixels) per tile, 4x fewer,
for the price of two transforms that are a few adds per element. The weight transform runs at
compile time (U is a constant); three kernels run per call:

* ``WinogradInput``: V[p, t, c], tiles t = (image, tile row, tile column), channels
  contiguous: the GEMM's A operand, rows read in place;
* the batched ``Matmul`` (batch p) of the generic GEMM: M = V @ U^T, with U^T a constant
  packed per position at compile time. Tiles are the rows (M) and output channels the
  columns (N): a layer with 49 or 196 tiles leaves no 16-column panel part-empty, and the
  weight streams as the B panels (ResNet-18's 28x28 layer: 186 -> 137 us for its 36 GEMMs,
  the 56x56 one 163 -> 134 us);
* ``WinogradOutput``: the inverse transform of M into NCHW, clipped at the image's edge,
  with the convolution's bias and any fused pointwise consumer (ReLU, a residual add) as its
  epilogue.

fp32 error grows with the transform's constants: measured about 3e-6 of the output's largest
value (512 channels), within the 1e-4 every conv test allows. Only worth it where there are
enough tiles per GEMM and channels per tile: ``worthwhile`` decides.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.symbolic import Dim
from .loop_ir import Buffer, Expr, Template

TILE, PATCH = 4, 6          # output pixels per tile side; input patch side (TILE + 3 - 1)
POS = PATCH * PATCH         # positions per transformed tile: the batch of the GEMM

BT = np.array([[4, 0, -5, 0, 1, 0],
               [0, -4, -4, 1, 1, 0],
               [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0],
               [0, 2, -1, -2, 1, 0],
               [0, 4, 0, -5, 0, 1]], np.float64)
G = np.array([[1 / 4, 0, 0],
              [-1 / 6, -1 / 6, -1 / 6],
              [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6],
              [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0],
               [0, 1, -1, 2, -2, 0],
               [0, 1, 1, 4, 4, 0],
               [0, 1, -1, 8, -8, 1]], np.float64)

MIN_TILES = 16      # tiles per image: fewer leave the GEMM's 16-column panels mostly empty
MIN_CHANNELS = 16   # input and output channels: below, the transforms cost more than they save


def transform_weight(w: np.ndarray) -> np.ndarray:
    """[O, C, 3, 3] -> U [36, O, C], U[p = 6i + k, o, c] = (G w[o, c] G^T)[i, k], in float64.

    >>> transform_weight(np.ones((2, 3, 3, 3), np.float32)).shape
    (36, 2, 3)
    """
    u = np.einsum("ia,ocab,kb->ikoc", G, w.astype(np.float64), G)
    return np.ascontiguousarray(u.reshape(POS, w.shape[0], w.shape[1]).astype(w.dtype))


def tiles(size: Dim) -> Dim:
    """Tiles along one output side (symbolic for a symbolic size)."""
    return (size + TILE - 1) // TILE


def worthwhile(C: int, O: int, Ho: int, Wo: int) -> bool:
    """Winograd pays when the GEMMs have a full panel of tiles and enough channels."""
    return tiles(Ho) * tiles(Wo) >= MIN_TILES and C >= MIN_CHANNELS and O >= MIN_CHANNELS


@dataclass
class WinogradInput(Template):
    """V[p, t, c] = (B^T d B)[p] of the 6x6 input patch d of tile t, channel c (zero padding)."""
    name: str
    out: Buffer          # contiguous [36, T, C]
    shape: tuple         # (36, T, C)
    x: Buffer            # NCHW image batch, contiguous from ``offset``
    offset: Dim
    N: Dim
    C: int
    H: Dim               # the image may be any size (symbolic)
    W: Dim
    pad: tuple           # (ph, pw)
    nth: Dim             # tile rows and columns per image
    ntw: Dim

    def inputs(self) -> list:
        return [self.x]


@dataclass
class WinogradOutput(Template):
    """out[n, o, h, w] = epilogue((A^T M[:, t, o] A)[h % 4, w % 4]), t the tile of (n, h, w)."""
    name: str
    out: Buffer          # contiguous [N, O, Ho, Wo]
    shape: tuple         # (N, O, Ho, Wo)
    m: Buffer            # [36, T, O], the GEMM's output
    N: Dim
    O: int
    Ho: Dim
    Wo: Dim
    nth: Dim
    ntw: Dim
    epilogue: Expr | None = None   # of var("acc") and the output vars i0..i3

    def inputs(self) -> list:
        return [self.m]

    def exprs(self) -> list:
        return [self.epilogue] if self.epilogue is not None else []
