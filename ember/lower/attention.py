"""The fused attention kernel of the loop IR: softmax(q k^T * scale + mask [causal]) v.

One ``Attention`` kernel replaces the GEMM -> max -> exp -> sum -> GEMM chain and never
stores the [batch..., Sq, Sk] scores: a backend walks blocks of keys with an online softmax
(running row max and sum, rescaling what it accumulated so far), FlashAttention's idea.
Operands are strided views, so permuted projections are read in place; a stride of 0 is a
broadcast dimension (a [B, 1, 1, Sk] padding mask, one K/V head shared by many queries).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir.symbolic import Dim
from .loop_ir import Buffer, Operand, Template


@dataclass
class Attention(Template):
    name: str
    out: Buffer             # [batch..., Sq, Dv] at out_strides
    shape: tuple
    batch: tuple
    Sq: Dim
    Sk: Dim
    D: Dim
    Dv: Dim
    q: Operand              # strides (batch..., Sq, D)
    k: Operand              # strides (batch..., Sk, D)
    v: Operand              # strides (batch..., Sk, Dv)
    mask: Operand | None    # additive; strides (batch..., Sq, Sk)
    scale: float
    causal: bool            # key j hidden from query i when j > i + Sk - Sq
    safe: bool              # a fully masked row gives zeros (else NaN, as the reference)
    out_strides: tuple      # (batch..., Sq, Dv) strides of out (heads inner, or contiguous)

    def inputs(self) -> list:
        ops = (self.q, self.k, self.v) + ((self.mask,) if self.mask is not None else ())
        return [o.buf for o in ops]
