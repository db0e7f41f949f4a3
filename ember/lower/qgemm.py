"""The int8 GEMM as a loop-IR ``Template`` kernel (printed by backends/cpu/gemm_int8.py).

    out[i, j] = epilogue(acc),  acc = sum_k A[i, k] * W[j, k]   (int32, exact)

Two routes, by what the lowering can prove about A (see gemm_int8's docstring for why):

* ``"u7"``: A is u8 with every code in [0, 127] (``dynamic_quantize(reduce_range=True)``),
  read in place, rows ``lda`` apart, K a multiple of 4; the weight is int8 packed in k-quads.
  A's zero point is not subtracted: the epilogue does it with the weight's column sums.
* ``"s16"``: A is int16 [M, K] (K even), the 8-bit activations minus their zero point, written
  by a pointwise loop before the kernel; the weight is packed in k-pairs, int8 or int16.

The weight ``b`` is packed at compile time by ``lower/packing_int8.pack_groups``. ``epilogue``
is an expression of ``var("acc", i32)`` and the output vars i0 (row), i1 (column):
dequantization, bias and fused pointwise work; None stores acc.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import dtypes
from ..ir.symbolic import Dim
from .loop_ir import Buffer, Expr, Template

GROUP = {"u7": 4, "s16": 2}   # k values per 32-bit lane of the micro-kernel


@dataclass
class QGemm(Template):
    name: str
    out: Buffer          # contiguous [M, N]
    shape: tuple         # (M, N)
    M: Dim
    N: int
    K: int               # padded to a multiple of GROUP[route]
    lda: Dim             # elements between rows of A
    a: Buffer
    b: Buffer            # packed weight (i8, or i16 on the s16 route)
    route: str           # "u7" | "s16"
    epilogue: Expr | None = None

    acc_dtype = dtypes.i32    # what var("acc") is in the epilogue (lower/schedule.py fuses into it)

    def inputs(self) -> list:
        return [self.a, self.b]

    def exprs(self) -> list:
        return [self.epilogue] if self.epilogue is not None else []
