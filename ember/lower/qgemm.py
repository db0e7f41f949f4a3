"""The int8 GEMM as a loop-IR ``Template`` kernel (printed by backends/cpu/gemm_int8.py).

    out[i, j] = epilogue(acc),  acc = sum_k A[i, k] * W[j, k]   (int32, exact)

``a`` is an int16 buffer [M, K2] (K2 = K rounded up to even, zeros past K): the 8-bit
activations already minus their zero point, written by an ordinary pointwise loop before the
kernel (lower/rules_quant.py). ``b`` is the weight packed at compile time by
``lower/packing_int8.pack_pairs`` (``b.dtype`` i8 or i16). ``epilogue`` is an expression of
``var("acc", i32)`` and the output vars i0 (row), i1 (column): dequantization, bias, and
whatever pointwise work was fused; None stores acc.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir.symbolic import Dim
from .loop_ir import Buffer, Expr, Template


@dataclass
class QGemm(Template):
    name: str
    out: Buffer          # contiguous [M, N]
    shape: tuple         # (M, N)
    M: Dim
    N: int
    K2: int              # even; the packed weight has K2 // 2 pairs
    a: Buffer            # int16 [M, K2]
    b: Buffer            # packed weight (i8 or i16)
    epilogue: Expr | None = None

    def inputs(self) -> list:
        return [self.a, self.b]

    def exprs(self) -> list:
        return [self.epilogue] if self.epilogue is not None else []
