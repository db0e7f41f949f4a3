"""Pattern recognition: turn decomposed framework code back into the ops it means.

GELU (erf and tanh forms), SiLU, softmax, layer norm, RMS norm and scaled-dot-product
attention come out of exporters as chains of small ops; as single ops they lower to one
well-fused kernel family each. Also matmul cleanups that expose those patterns: batch dims
merged by reshapes, weights expanded over the batch, scalar scales hoisted out of a matmul.
"""
from __future__ import annotations

import math

import numpy as np

from .pattern import Const, Match, Op, Var, apply_rules, scalar

is_neg_inf = scalar(lambda v: v == -math.inf)
is_zero = scalar(lambda v: v == 0)


def _tail_axes(v, axes) -> int | None:
    """The first axis if ``axes`` are exactly the trailing dims of ``v``, else None."""
    rank = v.type.rank
    norm = sorted(a % rank for a in axes)
    return norm[0] if norm == list(range(norm[0], rank)) else None


def _scalar_value(c) -> float:
    # str() of a numpy scalar is its shortest round-trip form: f32 1e-5 stays 1e-05
    return float(str(c.data.reshape(-1)[0]))


def _is_scalar_const(v) -> bool:
    return v.kind == "const" and v.data is not None and v.data.size >= 1 and \
        bool(np.all(v.data.reshape(-1) == v.data.reshape(-1)[0])) and v.data.size == 1


# -- matmul cleanups

def _drop_expand(g, m):
    new = g.op("matmul", [m["a"], m["b"]])
    return new if new.type == m.root.type else None


def _unmerge_batch(g, m):
    """reshape(matmul(A', B')) -> matmul(A, B) when the reshapes only merge/split batch dims."""
    mm = m.node("mm")
    out = m.root
    if out.type.rank < 3 or mm.outputs[0].type.rank != 3 or out.shape[-2:] != mm.outputs[0].shape[-2:]:
        return None
    batch = tuple(out.shape[:-2])
    args = []
    for v in mm.inputs:
        n = v.producer
        if n is not None and n.op == "reshape" and n.inputs[0].shape[:-2] == batch and \
                n.inputs[0].shape[-2:] == v.shape[-2:]:
            args.append(n.inputs[0])  # undo the merge
        else:
            args.append(g.op("reshape", [v], {"shape": batch + tuple(v.shape[-2:])}))
    if all(a.producer is not None and a.producer.op == "reshape" and a.producer.inputs[0] in mm.inputs
           for a in args):
        return None  # nothing to gain: no merge was undone
    new = g.op("matmul", args)
    return new if new.type == out.type else None


def _hoist_scales(g, m):
    """(a*c1) @ (b*c2) -> (a @ b) * (c1*c2) for scalar constants."""
    a, b, scale = m.root.producer.inputs[0], m.root.producer.inputs[1], 1.0
    parts = []
    for v in (a, b):
        n = v.producer
        if n is not None and n.op == "mul" and _is_scalar_const(n.inputs[1]):
            scale *= _scalar_value(n.inputs[1])
            v = n.inputs[0]
        elif n is not None and n.op == "mul" and _is_scalar_const(n.inputs[0]):
            scale *= _scalar_value(n.inputs[0])
            v = n.inputs[1]
        parts.append(v)
    if parts[0] is a and parts[1] is b:
        return None
    mm = g.op("matmul", parts)
    return g.op("mul", [mm, g.add_const(np.array(scale, dtype=mm.dtype.np), "scale", mm.dtype)])


# -- attention

_SAFE = Op("where",
           Op("logical_not", Op("cast", Op("max", Op("cast", Op("logical_not", Op("eq", Var("s"), Const(None, is_neg_inf))))))),
           Var("zero"), Op("softmax", Var("s"), name="sm"))


def _softmax_input(p):
    """(scores, safe) when ``p`` is softmax over the last axis: plain, or NaN-safe as torch's
    SDPA writes it (rows that are all -inf give zeros)."""
    n = p.producer
    if n is not None and n.op == "softmax" and n.attrs["axis"] % p.type.rank == p.type.rank - 1:
        return n.inputs[0], False
    m = Match(p)
    if not _SAFE.match(p, m) or m.node("sm").attrs["axis"] % p.type.rank != p.type.rank - 1:
        return None
    z = m["zero"]
    if (z.kind == "const" and z.data is not None and np.all(z.data == 0)) or \
            (z.producer is not None and z.producer.op == "full" and z.producer.attrs["value"] == 0):
        return m["s"], True
    return None


def _attention(g, m):
    got = _softmax_input(m["p"])
    if got is None:
        return None
    s, safe = got
    v, mask, scale = m["v"], None, 1.0
    n = s.producer
    if n is not None and n.op == "add" and n.inputs[0].type == s.type:
        s, mask = n.inputs
        n = s.producer
    elif n is not None and n.op == "add" and n.inputs[1].type == s.type:
        mask, s = n.inputs
        n = s.producer
    if n is not None and n.op == "mul" and _is_scalar_const(n.inputs[1]):
        scale, s = _scalar_value(n.inputs[1]), n.inputs[0]
        n = s.producer
    if n is None or n.op != "matmul" or s.type.rank < 2 or n.inputs[0].type.rank < 2 or n.inputs[1].type.rank < 2:
        return None
    q, kt = n.inputs
    rank = kt.type.rank
    swap = tuple(range(rank - 2)) + (rank - 1, rank - 2)
    kn = kt.producer
    k = kn.inputs[0] if kn is not None and kn.op == "permute" and kn.attrs["perm"] == swap else \
        g.op("permute", [kt], {"perm": swap})
    if mask is not None and (mask.dtype != q.dtype):
        return None
    ins = [q, k, v] + ([mask] if mask is not None else [])
    try:
        out = g.op("attention", ins, {"scale": scale, "causal": False, "safe": safe})
    except Exception:  # shapes that attention cannot express (e.g. a mask that grows the batch)
        return None
    return out if out.type == m.root.type else None


# -- activations and normalizations

def _mul_factors(v, limit=4):
    """Flatten a tree of single-purpose ``mul`` nodes into its factors."""
    n = v.producer
    if n is None or n.op != "mul" or limit == 0:
        return [v]
    return _mul_factors(n.inputs[0], limit - 1) + _mul_factors(n.inputs[1], limit - 1)


def _split_half(factors):
    """(x, rest) when factors are {0.5, x, rest}, the shape of both GELU forms."""
    halves = [f for f in factors if _is_scalar_const(f) and abs(_scalar_value(f) - 0.5) < 1e-6]
    if len(factors) != 3 or len(halves) != 1:
        return None
    others = [f for f in factors if f is not halves[0]]
    return others


def _one_plus(v):
    """y when v = 1 + y (either order)."""
    n = v.producer
    if n is None or n.op != "add":
        return None
    for a, b in ((n.inputs[0], n.inputs[1]), (n.inputs[1], n.inputs[0])):
        if _is_scalar_const(a) and _scalar_value(a) == 1.0:
            return b
    return None


def _scaled(v, x, k, rel=1e-4):
    """True when v = x * k (k a scalar constant close to the given value)."""
    f = _mul_factors(v, 2)
    consts = [c for c in f if _is_scalar_const(c)]
    return len(f) == 2 and x in f and len(consts) == 1 and abs(_scalar_value(consts[0]) - k) <= rel * abs(k)


def _gelu(g, m):
    others = _split_half(_mul_factors(m.root))
    if not others:
        return None
    for x, rest in (others, others[::-1]):
        inner = _one_plus(rest)
        if inner is None or inner.producer is None:
            continue
        op = inner.producer.op
        arg = inner.producer.inputs[0] if inner.producer.inputs else None
        if op == "erf" and _scaled(arg, x, 1 / math.sqrt(2)):
            return g.op("gelu", [x], {"approximate": "none"})
        if op == "tanh" and _is_tanh_arg(arg, x):
            return g.op("gelu", [x], {"approximate": "tanh"})
    return None


def _is_tanh_arg(v, x) -> bool:
    """v = sqrt(2/pi) * (x + 0.044715 * x^3), the tanh-GELU argument."""
    f = _mul_factors(v, 2)
    consts = [c for c in f if _is_scalar_const(c)]
    if len(f) != 2 or len(consts) != 1 or abs(_scalar_value(consts[0]) - math.sqrt(2 / math.pi)) > 1e-4:
        return False
    s = [a for a in f if a is not consts[0]][0].producer
    if s is None or s.op != "add" or x not in s.inputs:
        return False
    cube = s.inputs[1] if s.inputs[0] is x else s.inputs[0]
    cf = _mul_factors(cube, 3)
    cc = [c for c in cf if _is_scalar_const(c)]
    xs = [c for c in cf if c is x]
    pw = [c for c in cf if c.producer is not None and c.producer.op == "pow" and c.producer.inputs[0] is x
          and _is_scalar_const(c.producer.inputs[1]) and _scalar_value(c.producer.inputs[1]) == 3.0]
    return len(cc) == 1 and abs(_scalar_value(cc[0]) - 0.044715) < 1e-6 and \
        (len(xs) == 3 and len(cf) == 4 or len(pw) == 1 and len(cf) == 2)


def _softmax(g, m):
    mx, sm = m.node("mx"), m.node("sm")
    if len(mx.attrs["axes"]) != 1 or tuple(sm.attrs["axes"]) != tuple(mx.attrs["axes"]) or \
            not mx.attrs["keepdims"] or not sm.attrs["keepdims"]:
        return None
    return g.op("softmax", [m["x"]], {"axis": m.node("mx").attrs["axes"][0]})


def _layer_norm(g, m):
    mu, var = m.node("mu"), m.node("var")
    ax = _tail_axes(m["x"], mu.attrs["axes"])
    if ax is None or tuple(var.attrs["axes"]) != tuple(mu.attrs["axes"]) or \
            not mu.attrs["keepdims"] or not var.attrs["keepdims"]:
        return None
    return g.op("layer_norm", [m["x"]], {"axis": ax, "eps": _scalar_value(m["eps"])})


def _norm_weight(g, m):
    n = m.node("ln")
    x, w = n.inputs[0], m["w"]
    if len(n.inputs) != 1 or tuple(w.shape) != tuple(x.shape[n.attrs["axis"] % x.type.rank:]):
        return None
    return g.op(n.op, [x, w], n.attrs)


def _norm_bias(g, m):
    n = m.node("ln")
    x = n.inputs[0]
    if n.op != "layer_norm" or len(n.inputs) != 2 or tuple(m["b"].shape) != tuple(n.inputs[1].shape):
        return None
    return g.op("layer_norm", [x, n.inputs[1], m["b"]], n.attrs)


def _rms_norm(g, m):
    ms = m.node("ms")
    ax = _tail_axes(m["x"], ms.attrs["axes"])
    if ax is None or not ms.attrs["keepdims"]:
        return None
    return g.op("rms_norm", [m["x"]], {"axis": ax, "eps": _scalar_value(m["eps"])})


X = Var("x")
_variance = Op("mean", Op("mul", Var("d"), Var("d")), name="var")
RULES = [
    ("matmul-drop-expand", Op("matmul", Var("a"), Op("expand", Var("b"))), _drop_expand),
    ("matmul-unmerge-batch", Op("reshape", Op("matmul", Var("a"), Var("b"), name="mm")), _unmerge_batch),
    ("matmul-hoist-scale", Op("matmul", Var("a"), Var("b")), _hoist_scales),
    ("attention", Op("matmul", Var("p"), Var("v")), _attention),
    ("gelu", Op("mul", Var("a"), Var("b")), _gelu),
    ("silu", Op("mul", X, Op("sigmoid", X)), lambda g, m: g.op("silu", [m["x"]])),
    ("softmax", Op("div", Op("exp", Op("sub", X, Op("max", X, name="mx"), name="sh"), name="e"),
                   Op("sum", Var("e"), name="sm")), _softmax),
    ("layer-norm", Op("div", Op("sub", X, Op("mean", X, name="mu"), name="d"),
                      Op("sqrt", Op("add", _variance, Const("eps")))), _layer_norm),
    ("layer-norm-rsqrt", Op("mul", Op("sub", X, Op("mean", X, name="mu"), name="d"),
                            Op("rsqrt", Op("add", _variance, Const("eps")))), _layer_norm),
    ("rms-norm", Op("mul", X, Op("rsqrt", Op("add", Op("mean", Op("mul", X, X), name="ms"), Const("eps")))),
     _rms_norm),
    ("norm-weight", Op("mul", Var("ln", lambda v: v.producer is not None and v.producer.op in
                                   ("layer_norm", "rms_norm")), Const("w")), _norm_weight),
    ("norm-bias", Op("add", Var("ln", lambda v: v.producer is not None and v.producer.op == "layer_norm"),
                     Const("b")), _norm_bias),
]


def recognize(g, log=None):
    return apply_rules(g, RULES, log=log)
