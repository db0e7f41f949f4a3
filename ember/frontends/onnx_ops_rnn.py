"""ONNX recurrent layers (RNN, GRU, LSTM), unrolled over the sequence into ordinary ops.

Ember graphs are straight-line, so a recurrent layer with a static sequence length T becomes
T copies of its cell. The input projection of all T steps is one GEMM up front
(``X @ W^T + biases`` as a ``linear`` over [T, batch, input]); each step then adds the
recurrent GEMM ``H @ R^T`` (constant weights: packed once at compile time) and the gate math.

Covered: forward / reverse / bidirectional, initial states, biases, LSTM peepholes and
input_forget, GRU linear_before_reset, layout 0 and 1, clip (on the gates, as ONNX Runtime
does), every activation ONNX lists
(with activation_alpha / activation_beta consumed in order by the functions that take them),
and sequence_lens: a step at or past a batch entry's length leaves its state unchanged and
outputs zeros, which also makes a reverse pass start at that entry's last valid step.
"""
from __future__ import annotations

import numpy as np

from ..ir import dtypes
from .onnx import Unsupported
from .onnx_ops import CONVERTERS, _permute, _rank, _reshape, conv

# gates per cell, and the default activations of one direction
_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
_DEFAULT_ACTS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
# ONNX activation names -> the converter that implements them (alpha/beta as attributes)
_ACT_OPS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "leakyrelu": "LeakyRelu",
            "thresholdedrelu": "ThresholdedRelu", "hardsigmoid": "HardSigmoid", "elu": "Elu",
            "softsign": "Softsign", "softplus": "Softplus"}
_TAKES_ALPHA = {"affine", "leakyrelu", "thresholdedrelu", "scaledtanh", "hardsigmoid", "elu"}
_TAKES_BETA = {"affine", "scaledtanh", "hardsigmoid"}


def _activations(cx, a, kind: str, dirs: int):
    """One list of activation functions (x -> Value) per direction."""
    names = [n.decode() if isinstance(n, bytes) else n for n in a.get("activations") or []]
    per_dir = len(_DEFAULT_ACTS[kind])
    if not names:
        names = _DEFAULT_ACTS[kind] * dirs
    if len(names) != per_dir * dirs:
        raise Unsupported(f"{len(names)} activations for {dirs} direction(s) of {kind} "
                          f"(expected {per_dir * dirs})")
    alphas, betas = list(a.get("activation_alpha") or []), list(a.get("activation_beta") or [])
    clip = a.get("clip")
    fns = []
    for k, name in enumerate(names):
        key = name.lower()
        attrs = {}
        if key in _TAKES_ALPHA and alphas:
            attrs["alpha"] = float(alphas.pop(0))
        if key in _TAKES_BETA and betas:
            attrs["beta"] = float(betas.pop(0))
        # clip bounds the gates' pre-activations; LSTM's h(C) gets the cell state unclipped
        # (as in ONNX Runtime: clip is a bound on the gates, not on the cell)
        gate = not (kind == "LSTM" and k % per_dir == 2)
        fns.append(_activation(cx, key, name, attrs, clip if gate else None))
    return [fns[d * per_dir:(d + 1) * per_dir] for d in range(dirs)]


def _activation(cx, key, name, attrs, clip):
    def clipped(x):
        # clip bounds the input of every activation
        return x if clip is None else cx.op("clamp", [x], {"min": -float(clip), "max": float(clip)})
    if key == "affine":
        al, be = attrs.get("alpha", 1.0), attrs.get("beta", 0.0)
        return lambda x: cx.op("add", [cx.op("mul", [clipped(x), cx.const(al, x.dtype)]), cx.const(be, x.dtype)])
    if key == "scaledtanh":
        al, be = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
        return lambda x: cx.op("mul", [cx.op("tanh", [cx.op("mul", [clipped(x), cx.const(be, x.dtype)])]),
                                       cx.const(al, x.dtype)])
    if key not in _ACT_OPS:
        raise Unsupported(f"activation {name!r}")
    fn = CONVERTERS[_ACT_OPS[key]]
    return lambda x: fn(cx, [clipped(x)], attrs)


def _take(cx, v, axis, start, end):
    """v[start:end] along ``axis``."""
    if start == 0 and end == v.shape[axis]:
        return v
    return cx.op("slice", [v], {"axis": axis, "start": start, "end": end, "step": 1})


def _direction(cx, v, d, shape):
    """Direction ``d`` of a per-direction input ([dirs, ...]) reshaped to ``shape``."""
    return _reshape(cx, _take(cx, v, 0, d, d + 1), shape)


def _full(cx, shape, value, like):
    return cx.op("full", [], {"shape": tuple(shape), "value": float(value), "dtype": like.dtype})


def _step_masks(cx, seq_lens, T, batch):
    """Per step: a [batch, 1] bool mask of the entries still inside their sequence, or None
    for all steps when there is no sequence_lens (or every length is T)."""
    if seq_lens is None:
        return [None] * T
    if seq_lens.kind == "const" and seq_lens.data is not None and np.all(np.asarray(seq_lens.data) == T):
        return [None] * T
    lens = _reshape(cx, cx.cast(seq_lens, dtypes.i64), (batch, 1))
    return [cx.op("lt", [cx.const(t, dtypes.i64), lens]) for t in range(T)]


@conv("RNN", "GRU", "LSTM")
def _recurrent(cx, ins, a):
    kind = cx.node.op_type
    X, W, R, B, seq_lens, h0 = (ins[k] for k in range(6))
    c0, P = (ins[6], ins[7]) if kind == "LSTM" else (None, None)
    if not X.dtype.is_float:
        raise Unsupported(f"{kind} on {X.dtype} inputs")
    layout = a.get("layout", 0)
    direction = a.get("direction", "forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in ("forward", "reverse", "bidirectional"):
        raise Unsupported(f"{kind} direction {direction!r}")
    dirs = 2 if direction == "bidirectional" else 1
    if layout:  # [batch, seq, input] -> [seq, batch, input]; states [batch, dirs, hidden] -> [dirs, ...]
        X = _permute(cx, X, (1, 0, 2))
        h0 = _permute(cx, h0, (1, 0, 2)) if h0 is not None else None
        c0 = _permute(cx, c0, (1, 0, 2)) if c0 is not None else None
    T, batch, _ = X.shape
    if not isinstance(T, int):
        raise Unsupported(f"{kind} over a dynamic sequence length (it is unrolled: the length must be static)")
    H = int(a.get("hidden_size") or R.shape[-1])
    G = _GATES[kind]
    if tuple(W.shape[:2]) != (dirs, G * H) or tuple(R.shape) != (dirs, G * H, H):
        raise Unsupported(f"{kind} weights of shapes {list(W.shape)} / {list(R.shape)} for "
                          f"{dirs} direction(s), hidden_size {H}")
    acts = _activations(cx, a, kind, dirs)
    masks = _step_masks(cx, seq_lens, T, batch)
    zero_state = _full(cx, (batch, H), 0.0, X)
    ys, hs, cs = [], [], []
    for d in range(dirs):
        reverse = direction == "reverse" or d == 1
        Wd = _direction(cx, W, d, (G * H, X.shape[2]))
        Rd = _direction(cx, R, d, (G * H, H))
        Bd = _direction(cx, B, d, (2 * G * H,)) if B is not None else None
        h = _direction(cx, h0, d, (batch, H)) if h0 is not None else zero_state
        cell = {"RNN": _rnn_cell, "GRU": _gru_cell, "LSTM": _lstm_cell}[kind]
        state = cell(cx, a, X, Wd, Rd, Bd, H, acts[d], P, d, batch)
        c = (_direction(cx, c0, d, (batch, H)) if c0 is not None else zero_state) if kind == "LSTM" else None
        out = [None] * T
        for t in (range(T - 1, -1, -1) if reverse else range(T)):
            h_new, c_new = state(t, h, c)
            m = masks[t]
            if m is not None:  # past this entry's length: keep the state, output zeros
                out[t] = cx.op("where", [m, h_new, _full(cx, (batch, H), 0.0, X)])
                h = cx.op("where", [m, h_new, h])
                c = cx.op("where", [m, c_new, c]) if c is not None else None
            else:
                out[t], h, c = h_new, h_new, c_new
        ys.append(cx.op("concat", [_reshape(cx, y, (1, 1, batch, H)) for y in out], {"axis": 0})
                  if T > 1 else _reshape(cx, out[0], (1, 1, batch, H)))
        hs.append(_reshape(cx, h, (1, batch, H)))
        cs.append(_reshape(cx, c, (1, batch, H)) if c is not None else None)
    cat = (lambda vs, ax: vs[0] if len(vs) == 1 else cx.op("concat", vs, {"axis": ax}))
    Y, Y_h = cat(ys, 1), cat(hs, 0)           # [T, dirs, batch, H], [dirs, batch, H]
    Y_c = cat(cs, 0) if kind == "LSTM" else None
    if layout:
        Y = _permute(cx, Y, (2, 0, 1, 3))       # [batch, T, dirs, H]
        Y_h = _permute(cx, Y_h, (1, 0, 2))      # [batch, dirs, H]
        Y_c = _permute(cx, Y_c, (1, 0, 2)) if Y_c is not None else None
    return [Y, Y_h] + ([Y_c] if kind == "LSTM" else [])


def _input_proj(cx, X, Wd, bias):
    """X @ Wd^T + bias for every step at once: [T, batch, gates * H]."""
    return cx.op("linear", [X, Wd] + ([bias] if bias is not None else []))


def _at(cx, xw, t, batch):
    return _reshape(cx, _take(cx, xw, 0, t, t + 1), (batch, xw.shape[2]))


def _cols(cx, v, k, H):
    """Gate ``k`` ([:, k*H:(k+1)*H]) of a [batch, gates*H] tensor."""
    return _take(cx, v, _rank(v) - 1, k * H, (k + 1) * H)


def _rnn_cell(cx, a, X, Wd, Rd, Bd, H, acts, P, d, batch):
    bias = cx.op("add", [_take(cx, Bd, 0, 0, H), _take(cx, Bd, 0, H, 2 * H)]) if Bd is not None else None
    xw = _input_proj(cx, X, Wd, bias)
    f = acts[0]

    def step(t, h, c):
        return f(cx.op("add", [_at(cx, xw, t, batch), cx.op("linear", [h, Rd])])), None
    return step


def _gru_cell(cx, a, X, Wd, Rd, Bd, H, acts, P, d, batch):
    # gate order z (update), r (reset), h (candidate)
    f, g = acts
    lbr = bool(a.get("linear_before_reset", 0))
    if Bd is not None:
        wb, rb = _take(cx, Bd, 0, 0, 3 * H), _take(cx, Bd, 0, 3 * H, 6 * H)
        # r_bh stays inside the reset product when linear_before_reset; else it is a plain bias
        bias = cx.op("add", [wb, cx.op("concat", [_take(cx, rb, 0, 0, 2 * H), _full(cx, (H,), 0.0, X)], {"axis": 0})
                             if lbr else rb])
        rbh = _take(cx, rb, 0, 2 * H, 3 * H)
    else:
        bias, rbh = None, None
    xw = _input_proj(cx, X, Wd, bias)
    r_zr, r_h = _take(cx, Rd, 0, 0, 2 * H), _take(cx, Rd, 0, 2 * H, 3 * H)
    one = cx.const(1.0, X.dtype)

    def step(t, h, c):
        xt = _at(cx, xw, t, batch)
        zr = cx.op("add", [_take(cx, xt, 1, 0, 2 * H), cx.op("linear", [h, r_zr])])
        z, r = f(_cols(cx, zr, 0, H)), f(_cols(cx, zr, 1, H))
        if lbr:
            hr = cx.op("linear", [h, r_h] + ([rbh] if rbh is not None else []))
            pre = cx.op("add", [_cols(cx, xt, 2, H), cx.op("mul", [r, hr])])
        else:
            pre = cx.op("add", [_cols(cx, xt, 2, H), cx.op("linear", [cx.op("mul", [r, h]), r_h])])
        cand = g(pre)
        # (1 - z) * cand + z * h
        return cx.op("add", [cx.op("mul", [cx.op("sub", [one, z]), cand]), cx.op("mul", [z, h])]), None
    return step


def _lstm_cell(cx, a, X, Wd, Rd, Bd, H, acts, P, d, batch):
    # gate order i (input), o (output), f (forget), c (cell candidate); peepholes i, o, f
    f, g, hf = acts
    bias = cx.op("add", [_take(cx, Bd, 0, 0, 4 * H), _take(cx, Bd, 0, 4 * H, 8 * H)]) if Bd is not None else None
    xw = _input_proj(cx, X, Wd, bias)
    peep = None
    if P is not None:
        Pd = _direction(cx, P, d, (3 * H,))
        peep = [_take(cx, Pd, 0, k * H, (k + 1) * H) for k in range(3)]
    couple = bool(a.get("input_forget", 0))
    one = cx.const(1.0, X.dtype)

    def step(t, h, c):
        gates = cx.op("add", [_at(cx, xw, t, batch), cx.op("linear", [h, Rd])])
        gi, go, gf, gc = (_cols(cx, gates, k, H) for k in range(4))
        if peep is not None:
            gi = cx.op("add", [gi, cx.op("mul", [peep[0], c])])
            gf = cx.op("add", [gf, cx.op("mul", [peep[2], c])])
        i = f(gi)
        fg = cx.op("sub", [one, i]) if couple else f(gf)
        c_new = cx.op("add", [cx.op("mul", [fg, c]), cx.op("mul", [i, g(gc)])])
        if peep is not None:
            go = cx.op("add", [go, cx.op("mul", [peep[1], c_new])])
        h_new = cx.op("mul", [f(go), hf(c_new)])
        return h_new, c_new
    return step
