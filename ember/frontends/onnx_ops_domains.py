"""ONNX converters, continued from onnx_ops.py: Ops outside the default domain: ai.onnx.preview, ai.onnx.preview.training, ai.onnx.ml."""
from __future__ import annotations

import functools
import math

import numpy as np

from ..errors import ShapeError
from ..ir import dtypes
from ..ir.symbolic import prod
from .onnx import Unsupported, onnx_dtype
from .onnx_ops import DOMAIN_CONVERTERS, _c, _float, _permute, _rank, _reshape, _unsqueeze, _where, conv
from .onnx_ops_control import _as_value, _run_subgraph


# ---------------------------------------------------------------- ai.onnx.preview

@conv("FlexAttention", domain="ai.onnx.preview")
def _flex_attention(cx, ins, a):
    q, k, v = _float(ins[0], "FlexAttention"), ins[1], ins[2]
    if not all(_rank(t) == 4 for t in (q, k, v)):
        raise ShapeError("FlexAttention needs rank-4 Q, K and V")
    B, hq, _, E = q.shape
    hkv, S = k.shape[1], k.shape[2]
    if hq != hkv:
        if not (isinstance(hq, int) and isinstance(hkv, int)) or hq % hkv:
            raise ShapeError(f"FlexAttention: {hq} query heads are not a multiple of {hkv} kv heads")
        g = hq // hkv  # each kv head serves a contiguous group of query heads
        k, v = (_reshape(cx, cx.op("expand", [_reshape(cx, t, (B, hkv, 1, S, t.shape[3]))],
                                   {"shape": (B, hkv, g, S, t.shape[3])}), (B, hq, S, t.shape[3]))
                for t in (k, v))
    scale = a.get("scale", 1.0 / math.sqrt(E))
    if "softmax_precision" in a:
        work = onnx_dtype(a["softmax_precision"])
    else:
        work = dtypes.f64 if q.dtype is dtypes.f64 else dtypes.f32
    # both operands scaled by sqrt(scale), in the input's precision, as the reference does
    root = _c(cx, float(np.sqrt(np.float32(scale))), q)
    scores = cx.op("matmul", [cx.op("mul", [q, root]), _permute(cx, cx.op("mul", [k, root]), (0, 1, 3, 2))])
    scores = cx.cast(scores, work)
    if "score_mod" in a:
        g_ = a["score_mod"].g
        scores = cx.cast(_as_value(cx, _run_subgraph(cx, g_, {g_.input[0].name: scores}, "score_mod")[0]), work)
    probs = cx.op("softmax", [scores], {"axis": -1})
    if "prob_mod" in a:
        g_ = a["prob_mod"].g
        probs = cx.cast(_as_value(cx, _run_subgraph(cx, g_, {g_.input[0].name: probs}, "prob_mod")[0]), work)
    return cx.cast(cx.op("matmul", [probs, cx.cast(v, work)]), v.dtype)


# ---------------------------------------------------------------- ai.onnx.preview.training
#
# One optimizer step, as plain arithmetic. The step count t decides branches and powers,
# so it is a compile-time fact (cx.scalar); the learning rate stays a run-time tensor.

_TRAINING = "ai.onnx.preview.training"


def _optimizer(n_state, step):
    def f(cx, ins, a):
        vals = [v for v in ins]
        r, t = vals[0], int(cx.scalar(1))
        n = (len(vals) - 2) // (2 + n_state)
        if n < 1 or len(vals) != 2 + n * (2 + n_state):
            raise ShapeError(f"{cx.node.op_type}: {len(vals)} inputs do not form (R, T, X.., G.., states..)")
        groups = [vals[2 + k * n: 2 + (k + 1) * n] for k in range(2 + n_state)]
        outs = [[] for _ in range(1 + n_state)]
        for i in range(n):
            x = _float(groups[0][i], cx.node.op_type)
            c = functools.partial(_c, cx, like=x)  # a scalar constant of x's dtype
            res = step(cx, c, cx.cast(r, x.dtype), t, x, groups[1][i], *[g[i] for g in groups[2:]], a=a)
            for k, v in enumerate(res):
                outs[k].append(v)
        return [v for o in outs for v in o]
    return f


def _mul(cx, *xs):
    out = xs[0]
    for v in xs[1:]:
        out = cx.op("mul", [out, v])
    return out


def _adagrad_step(cx, c, r, t, x, g, h, a):
    g = cx.op("add", [cx.op("mul", [c(a.get("norm_coefficient", 0.0)), x]), g])
    h = cx.op("add", [h, cx.op("mul", [g, g])])
    rate = cx.op("div", [r, c(1.0 + t * a.get("decay_factor", 0.0))])
    den = cx.op("add", [cx.op("sqrt", [h]), c(a.get("epsilon", 0.0))])
    return [cx.op("sub", [x, cx.op("div", [cx.op("mul", [rate, g]), den])]), h]


def _adam_step(cx, c, r, t, x, g, v, h, a):
    alpha, beta = a.get("alpha", 0.9), a.get("beta", 0.999)
    g = cx.op("add", [cx.op("mul", [c(a.get("norm_coefficient", 0.0)), x]), g])
    v = cx.op("add", [cx.op("mul", [c(alpha), v]), cx.op("mul", [c(1 - alpha), g])])
    h = cx.op("add", [cx.op("mul", [c(beta), h]), _mul(cx, c(1 - beta), g, g)])
    den = cx.op("add", [cx.op("sqrt", [h]), c(a.get("epsilon", 0.0))])
    rate = cx.op("mul", [r, c(math.sqrt(1 - beta ** t) / (1 - alpha ** t))]) if t > 0 else r
    x = cx.op("sub", [x, cx.op("mul", [rate, cx.op("div", [v, den])])])
    return [cx.op("mul", [c(1 - a.get("norm_coefficient_post", 0.0)), x]), v, h]


def _momentum_step(cx, c, r, t, x, g, v, a):
    alpha, beta, mode = a["alpha"], a["beta"] if t > 0 else 1.0, a["mode"]
    g = cx.op("add", [cx.op("mul", [c(a["norm_coefficient"]), x]), g])
    v = cx.op("add", [cx.op("mul", [c(alpha), v]), cx.op("mul", [c(beta), g])])
    if mode == "standard":
        step = v
    elif mode == "nesterov":
        step = cx.op("add", [g, cx.op("mul", [c(alpha), v])])
    else:
        raise ShapeError(f"Momentum mode must be standard or nesterov, got {mode!r}")
    return [cx.op("sub", [x, cx.op("mul", [r, step])]), v]


DOMAIN_CONVERTERS[(_TRAINING, "Adagrad")] = _optimizer(1, _adagrad_step)
DOMAIN_CONVERTERS[(_TRAINING, "Adam")] = _optimizer(2, _adam_step)
DOMAIN_CONVERTERS[(_TRAINING, "Momentum")] = _optimizer(1, _momentum_step)


# ---------------------------------------------------------------- ai.onnx.ml (numeric ops)

_ML = "ai.onnx.ml"


@conv("Binarizer", domain=_ML)
def _binarizer(cx, ins, a):
    x = ins[0]
    return cx.cast(cx.op("gt", [x, _c(cx, a.get("threshold", 0.0), x)]), x.dtype)


@conv("ArrayFeatureExtractor", domain=_ML)
def _array_feature_extractor(cx, ins, a):
    x, idx = ins[0], ins[1]
    n = prod(idx.shape)
    y = cx.op("index_select", [x, _reshape(cx, cx.cast(idx, dtypes.i64), (n,))], {"axis": _rank(x) - 1})
    return _reshape(cx, y, (1, n)) if _rank(x) == 1 else y


@conv("TreeEnsemble", domain=_ML)
def _tree_ensemble(cx, ins, a):
    """Every leaf is reached when the decisions along its path hold: the ensemble is a sum
    (or min / max) over leaves of where(path, weight, identity), with the tree structure
    walked at compile time."""
    x = _float(ins[0], "TreeEnsemble")
    if _rank(x) != 2:
        raise ShapeError(f"TreeEnsemble needs X of shape [N, F], got {list(x.shape)}")
    arr = lambda k, default=None: None if a.get(k, default) is None else \
        np.asarray(a.get(k, default)).reshape(-1)  # noqa: E731
    feat, modes, splits = arr("nodes_featureids"), arr("nodes_modes"), arr("nodes_splits")
    t_ids, t_leaf, f_ids, f_leaf = (arr(k) for k in ("nodes_truenodeids", "nodes_trueleafs",
                                                     "nodes_falsenodeids", "nodes_falseleafs"))
    missing = arr("nodes_missing_value_tracks_true")
    weights, targets = arr("leaf_weights"), arr("leaf_targetids")
    members = iter(arr("membership_values", []) if a.get("membership_values") is not None else [])
    agg, post = a.get("aggregate_function", 1), a.get("post_transform", 0)
    if post != 0:
        raise Unsupported(f"TreeEnsemble post_transform {post} (only NONE)")
    n_targets = a["n_targets"]
    k = lambda v: _c(cx, v, x)  # noqa: E731
    cmp = {0: "le", 1: "lt", 2: "ge", 3: "gt", 4: "eq", 5: "ne"}
    decision = {}
    for i in range(len(modes)):  # BRANCH_MEMBER sets are listed in node order, NaN-delimited
        xi = _reshape(cx, cx.op("slice", [x], {"axis": 1, "start": int(feat[i]), "end": int(feat[i]) + 1}),
                      (x.shape[0],))
        if int(modes[i]) == 6:
            d = None
            for v in members:  # this node's set runs up to the next NaN
                if np.isnan(v):
                    break
                e = cx.op("eq", [xi, k(float(v))])
                d = e if d is None else cx.op("logical_or", [d, e])
            d = d if d is not None else cx.op("ne", [xi, xi])  # an empty set: never (NaN != NaN only)
        elif int(modes[i]) in cmp:
            d = cx.op(cmp[int(modes[i])], [xi, k(float(splits[i]))])
        else:
            raise Unsupported(f"TreeEnsemble node mode {int(modes[i])}")
        if missing is not None and int(missing[i]):
            d = cx.op("logical_or", [d, cx.op("ne", [xi, xi])])  # NaN takes the true branch
        decision[i] = d
    ident = {0: 0.0, 1: 0.0, 2: float(np.finfo(x.dtype.np).max), 3: float(np.finfo(x.dtype.np).min)}.get(agg)
    if ident is None:
        raise Unsupported(f"TreeEnsemble aggregate_function {agg}")
    combine = {0: "add", 1: "add", 2: "minimum", 3: "maximum"}[agg]
    per_target = {}

    def walk(node, path, depth=0):
        if depth > 64:
            raise ShapeError("TreeEnsemble: the trees are deeper than 64 (a cycle?)")
        d = decision[node]
        for leaf, nxt, cond in ((t_leaf[node], t_ids[node], d),
                                (f_leaf[node], f_ids[node], cx.op("logical_not", [d]))):
            p = cond if path is None else cx.op("logical_and", [path, cond])
            if int(leaf):
                w = float(weights[int(nxt)]) / (len(roots) if agg == 0 else 1)
                term = _where(cx, p, k(w), k(0.0 if agg in (0, 1) else ident))
                tid = int(targets[int(nxt)])
                per_target[tid] = term if tid not in per_target else cx.op(combine, [per_target[tid], term])
            else:
                walk(int(nxt), p, depth + 1)
    roots = [int(r) for r in a["tree_roots"]]
    for r in roots:
        walk(r, None)
    cols = [_unsqueeze(cx, per_target.get(t, cx.op("full", [], {"shape": (x.shape[0],), "value": ident,
                                                                  "dtype": x.dtype})), [1])
            for t in range(n_targets)]
    return cols[0] if n_targets == 1 else cx.op("concat", cols, {"axis": 1})
