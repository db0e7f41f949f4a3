"""The lowering of ``attention`` (ember/ir/ops/nn.py), registered into ``rules.RULES``."""
from __future__ import annotations

import math

from ..ir.ops.registry import broadcast_shapes
from . import loop_ir as L
from .lowering import Lazy
from .rules import bcast, emit_matmul, permute, reduce_over, rule


@rule("attention")
def _attention(lw, n, r):
    q, k, v = r[:3]
    mask = r[3] if len(r) > 3 else None
    out, a = n.outputs[0], n.attrs
    batch = broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    sq, sk = q.shape[-2], k.shape[-2]
    sshape = batch + (sq, sk)
    kt = permute(k, tuple(range(len(k.shape) - 2)) + (len(k.shape) - 1, len(k.shape) - 2))

    def scores_epilogue(acc, ix):
        s = acc * a["scale"]
        if mask is not None:
            s = s + bcast(mask, sshape)(ix)
        if a["causal"]:  # keys after the query's position (aligned at the end) are hidden
            s = L.where(L.binary("gt", ix[-1], ix[-2] + (L.idx(sk) - L.idx(sq))), -math.inf, s)
        return s
    s = emit_matmul(lw, q, kt, sshape, out.dtype, epilogue=scores_epilogue)
    m = reduce_over(lw, s, [-1], True, "max")
    mb = bcast(m, sshape)
    dead = lambda ix: L.binary("eq", mb(ix), -math.inf)  # noqa: E731  (a fully masked row)
    shift = lambda ix: L.where(dead(ix), 0.0, mb(ix))  # noqa: E731
    e = Lazy(sshape, out.dtype, lambda ix: L.unary("exp", s.load(ix) - shift(ix)))
    total = bcast(reduce_over(lw, e, [-1], True, "sum"), sshape)

    def probs(ix):
        p = e.load(ix) / total(ix)
        return L.where(dead(ix), 0.0, p) if a["safe"] else p
    return emit_matmul(lw, Lazy(sshape, out.dtype, probs), v, out.shape, out.dtype, out)
