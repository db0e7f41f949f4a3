"""The lowering of ``attention`` (ember/ir/ops/nn.py), registered into ``rules.RULES``.

float32 attention becomes one fused ``Attention`` kernel (lower/attention.py) that reads q, k,
v and the mask through their strides, so the usual permuted views of a projection output
are not copied; only a value not yet in a buffer (a ``Lazy``, e.g. a mask computed from the
attention mask input) is stored first. Other dtypes take the unfused path: GEMM with the
scale/mask/causal epilogue, row max, exp, row sum, GEMM.
"""
from __future__ import annotations

import math

from ..ir import dtypes
from ..ir.ops.registry import broadcast_shapes
from . import loop_ir as L
from .attention import Attention
from .lowering import Lazy, View, contiguous_strides
from .rules import bcast, emit_matmul, permute, reduce_over, rule


def _operand(lw, ref, shape) -> L.Operand:
    """``ref`` as a strided operand of the (broadcast) ``shape``: stride 0 where it repeats."""
    view = lw.as_view(ref)
    lead = len(shape) - len(view.shape)
    strides = [0] * lead + [s if d != 1 else 0 for s, d in zip(view.strides, view.shape)]
    return L.Operand(view.buf, view.offset, tuple(strides))


def _unexpanded(lw, value):
    """The lowered input of the ``expand`` that produced ``value``, or value's own (the
    broadcast becomes a stride 0 in the operand): a mask made [b, 1, Sq, Sk] from a padding
    mask [b, 1, 1, Sk] is stored, if it must be, at its own size, and read as one row."""
    while value.producer is not None and value.producer.op == "expand":
        value = value.producer.inputs[0]
    return lw.refs[id(value)]


@rule("attention")
def _attention(lw, n, r):
    out = n.outputs[0]
    rank = len(out.shape)
    if all(x.dtype is dtypes.f32 and len(x.shape) <= rank for x in r) and out.dtype is dtypes.f32:
        return _fused(lw, n, r)
    return _unfused(lw, n, r)


def _fused(lw, n, r):
    q, k, v = r[:3]
    out, a = n.outputs[0], n.attrs
    batch = tuple(out.shape[:-2])
    sq, sk, d, dv = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    ops = [_operand(lw, _unexpanded(lw, v), batch + s) for v, s in zip(n.inputs, [(sq, d), (sk, d), (sk, dv), (sq, sk)])]
    # heads inner: [b, h, Sq, Dv] is stored as [b, Sq, h, Dv], the layout the next projection
    # reads after the model transposes the heads back, so that transpose costs no copy
    # (a graph output keeps the layout its caller gets)
    strides = contiguous_strides(out.shape)
    if len(batch) >= 2 and id(out) not in lw.out_slot:
        phys = contiguous_strides(batch[:-1] + (sq, batch[-1], dv))
        strides = phys[:-3] + (phys[-2], phys[-3], phys[-1])
    buf = lw.temp(out.dtype, out.shape, out)
    lw.prog.kernels.append(Attention(lw._name("k"), buf, tuple(out.shape), batch, sq, sk, d, dv,
                                     ops[0], ops[1], ops[2], ops[3] if len(ops) > 3 else None,
                                     float(a["scale"]), bool(a["causal"]), bool(a["safe"]), strides))
    return View(buf, out.shape, strides)


def _unfused(lw, n, r):
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
    dead = lambda ix: L.binary("eq", mb(ix), -math.inf)  # a fully masked row
    shift = lambda ix: L.where(dead(ix), 0.0, mb(ix))
    e = Lazy(sshape, out.dtype, lambda ix: L.unary("exp", s.load(ix) - shift(ix)))
    total = bcast(reduce_over(lw, e, [-1], True, "sum"), sshape)

    def probs(ix):
        p = e.load(ix) / total(ix)
        return L.where(dead(ix), 0.0, p) if a["safe"] else p
    return emit_matmul(lw, Lazy(sshape, out.dtype, probs), v, out.shape, out.dtype, out)
