"""Fold inference batch norm into the conv2d or linear that feeds it.

bn(conv(x, W, b)) = conv(x, W * s, (b - mean) * s + beta) with s = gamma / sqrt(var + eps),
per output channel; the new weights are computed once, here, at compile time.
"""
from __future__ import annotations

import numpy as np

from .pattern import Const, Op, Var, apply_rules


def _fold(g, m):
    prod = m.node("y")
    if prod is None or prod.op not in ("conv2d", "linear"):
        return None
    w = prod.inputs[1]
    if w.kind != "const" or w.data is None or (len(prod.inputs) == 3 and prod.inputs[2].kind != "const"):
        return None
    if prod.op == "linear" and m.root.type.rank != 2:
        return None  # BatchNorm1d over [N, C] only; channel is dim 1
    f64 = np.float64
    mean, var, gamma, beta = (m[k].data.astype(f64) for k in ("mean", "var", "gamma", "beta"))
    s = gamma / np.sqrt(var + m.root.producer.attrs["eps"])
    bias = prod.inputs[2].data.astype(f64) if len(prod.inputs) == 3 else np.zeros_like(mean)
    shape = (-1,) + (1,) * (w.type.rank - 1)
    dt = w.dtype
    w2 = g.add_const((w.data.astype(f64) * s.reshape(shape)).astype(dt.np), f"{w.name}_bn", dt)
    b2 = g.add_const(((bias - mean) * s + beta).astype(dt.np), f"{w.name}_bn_bias", dt)
    return g.op(prod.op, [prod.inputs[0], w2, b2], prod.attrs, source=prod.source)


RULES = [("fold-batch-norm", Op("batch_norm", Var("y"), Const("mean"), Const("var"), Const("gamma"),
                                Const("beta")), _fold)]


def fold_batch_norm(g, log=None):
    return apply_rules(g, RULES, log=log)
