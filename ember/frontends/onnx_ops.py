"""The ONNX op table: one small converter per ONNX op type.

A converter gets the Importer ``cx``, the node's inputs ``ins`` (``ins[i]`` is an Ember Value,
or None for an omitted optional input) and its attributes ``a`` (a dict of Python values). It
returns a Value, a list of Values (multi-output ops), or a ``Known`` (integer tensors
computed at import time). Inputs that must be known at compile time (a Reshape's shape, a
Slice's starts) are read with ``cx.ints(i)``, which also sees through symbolic sizes.

ONNX semantics the IR lacks are composed from existing ops where that is exact (Gemm is
matmul + add with transposes, 1-D Conv is a 2-D conv over a height of 1, Tile is expand +
reshape, ...). Converters raise ``Unsupported`` for variants Ember cannot express; the
importer gathers those and reports them all at once.
"""
from __future__ import annotations

import functools
import math
import sys

import numpy as np

from ..errors import ShapeError
from ..ir import dtypes
from ..ir.graph import Value
from ..ir.ops.registry import broadcast_shapes
from ..ir.symbolic import SymExpr, floordiv, prod
from .onnx import INT_MAX, Known, Unsupported, onnx_dtype

CONVERTERS: dict = {}
DOMAIN_CONVERTERS: dict = {}  # (domain, op type) -> converter, for ops outside ai.onnx


def conv(*names, domain: str = ""):
    def deco(fn):
        for n in names:
            if domain:
                DOMAIN_CONVERTERS[(domain, n)] = fn
            else:
                CONVERTERS[n] = fn
        return fn
    return deco


def _rank(v) -> int:
    return len(v.shape)


def _axis(ax: int, rank: int) -> int:
    if not -max(rank, 1) <= ax < max(rank, 1):
        raise ShapeError(f"axis {ax} out of range for rank {rank}")
    return ax % max(rank, 1)


def _float(v: Value, what: str = "this op"):
    if not v.dtype.is_float:
        raise Unsupported(f"{what} on {v.dtype} inputs")
    return v


def _c(cx, value, like: Value) -> Value:
    """A 0-d constant of ``like``'s dtype."""
    return cx.const(value, like.dtype)


def _reshape(cx, x, shape):
    shape = tuple(shape)
    return x if tuple(x.shape) == shape else cx.op("reshape", [x], {"shape": shape})


def _permute(cx, x, perm):
    perm = tuple(perm)
    return x if perm == tuple(range(len(perm))) else cx.op("permute", [x], {"perm": perm})


def _unsqueeze(cx, x, axes):
    shape = list(x.shape)
    rank = len(shape) + len(axes)
    for ax in sorted(_axis(a, rank) for a in axes):
        shape.insert(ax, 1)
    return _reshape(cx, x, shape)


# ---------------------------------------------------------------- import-time shape arithmetic

def _obj(v):
    return np.asarray(v, dtype=object)


def _has_sym(arr) -> bool:
    return any(isinstance(x, SymExpr) for x in np.asarray(arr, dtype=object).reshape(-1))


def _attr_or_input_axes(cx, a, idx, key="axes"):
    if cx.has(idx):
        return cx.ints(idx, key)
    v = a.get(key)
    return list(v) if v is not None else None


def _sym_slice(data, starts, ends, axes, steps):
    idx = [slice(None)] * data.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        idx[_axis(ax, data.ndim)] = slice(int(s), int(e), int(st))
    return data[tuple(idx)]


def _known_eval(cx, n, vals, a):
    """ONNX shape-arithmetic ops on numpy object arrays; None when not handled."""
    op = n.op_type
    if op == "Identity":
        return vals[0]
    if op in ("Add", "Sub", "Mul", "Div", "Mod"):
        f = {"Add": lambda x, y: x + y, "Sub": lambda x, y: x - y, "Mul": lambda x, y: x * y,
             "Div": lambda x, y: floordiv(x, y), "Mod": lambda x, y: x % y}[op]
        return np.vectorize(f, otypes=[object])(_obj(vals[0]), _obj(vals[1]))
    if op == "Neg":
        return np.vectorize(lambda x: -x, otypes=[object])(_obj(vals[0]))
    if op == "Equal":
        return np.vectorize(lambda x, y: x == y, otypes=[bool])(_obj(vals[0]), _obj(vals[1]))
    if op == "Where":
        return np.where(np.asarray(vals[0], bool), _obj(vals[1]), _obj(vals[2]))
    if op == "Gather":
        return np.take(_obj(vals[0]), np.asarray(vals[1]).astype(np.int64), axis=a.get("axis", 0))
    if op == "Concat":
        return np.concatenate([_obj(v) for v in vals], axis=a["axis"])
    if op == "Unsqueeze":
        axes = list(vals[1]) if len(vals) > 1 else list(a["axes"])
        x = _obj(vals[0])
        rank = x.ndim + len(axes)
        for ax in sorted(int(v) % rank for v in axes):
            x = np.expand_dims(x, ax)
        return x
    if op == "Squeeze":
        x = _obj(vals[0])
        axes = list(vals[1]) if len(vals) > 1 else a.get("axes")
        return np.squeeze(x, tuple(int(v) % x.ndim for v in axes)) if axes is not None else np.squeeze(x)
    if op == "Slice":
        x = _obj(vals[0])
        starts, ends = list(vals[1]), list(vals[2])
        axes = list(vals[3]) if len(vals) > 3 and vals[3] is not None else list(range(len(starts)))
        steps = list(vals[4]) if len(vals) > 4 and vals[4] is not None else [1] * len(starts)
        return _sym_slice(x, starts, ends, axes, steps)
    if op == "Reshape":
        x = _obj(vals[0])
        shape = [int(s) for s in vals[1]]
        shape = [x.shape[k] if s == 0 and not a.get("allowzero") else s for k, s in enumerate(shape)]
        return x.reshape(shape)
    if op == "Cast":
        if onnx_dtype(a["to"]) in (dtypes.i64, dtypes.i32):
            return _obj(vals[0])
        return None
    if op in ("Max", "Min") and not any(_has_sym(v) for v in vals):
        return None
    return None


_KNOWN_OPS = {"Identity", "Add", "Sub", "Mul", "Div", "Mod", "Neg", "Equal", "Where", "Gather",
              "Concat", "Unsqueeze", "Squeeze", "Slice", "Reshape", "Cast"}


def fold_known(cx, n, raw):
    """Evaluate ``n`` at import time when its inputs are symbolic sizes (``Known``) and
    constants; returns the results or None (then the converter runs)."""
    if n.op_type not in _KNOWN_OPS or not any(isinstance(r, Known) for r in raw):
        return None
    vals = []
    for r in raw:
        if r is None:
            vals.append(None)
        elif isinstance(r, Known):
            vals.append(r.data)
        elif isinstance(r, Value) and r.kind == "const" and r.data is not None:
            vals.append(r.data)
        else:
            return None
    dt = next(r.dtype for r in raw if isinstance(r, Known))
    if n.op_type == "Where":
        dt = raw[1].dtype
    if n.op_type == "Cast":
        dt = onnx_dtype(cx.attrs(n)["to"])
    try:
        out = _known_eval(cx, n, vals, cx.attrs(n))
    except (TypeError, ValueError, IndexError):
        return None
    if out is None:
        return None
    if not isinstance(out, np.ndarray):  # a 0-d result (np.take with a scalar index)
        arr = np.empty((), dtype=bool if isinstance(out, (bool, np.bool_)) else object)
        arr[()] = out
        out = arr
    if out.dtype == bool:
        return cx.const_array(out, dtypes.bool_)
    if not _has_sym(out):
        return cx.const_array(np.array(out.reshape(-1).tolist(), dtype=dt.np).reshape(out.shape), dt)
    return Known(out, dt)


# ---------------------------------------------------------------- elementwise

_UNARY = {"Abs": "abs", "Neg": "neg", "Exp": "exp", "Log": "log", "Sqrt": "sqrt",
          "Reciprocal": "reciprocal", "Tanh": "tanh", "Erf": "erf", "Sigmoid": "sigmoid",
          "Relu": "relu", "Sin": "sin", "Cos": "cos", "Floor": "floor", "Ceil": "ceil",
          "Sign": "sign", "Not": "logical_not"}


def _unary(ember_name):
    def f(cx, ins, a):
        x = ins[0]
        if ember_name in ("floor", "ceil") and not x.dtype.is_float:
            return x
        return cx.op(ember_name, [x])
    return f


for _t, _e in _UNARY.items():
    CONVERTERS[_t] = _unary(_e)


@conv("Identity")
def _identity(cx, ins, a):
    return ins[0]


@conv("Dropout")
def _dropout(cx, ins, a):
    # inference (or a ratio of 0): identity; the optional mask output is all ones (nothing
    # dropped). The training flag and the ratio, when they are inputs, are compile-time facts
    # (cx.scalar asks for their values).
    training = bool(cx.scalar(2, False)) if cx.has(2) else False
    ratio = float(cx.scalar(1, 0.5)) if cx.has(1) else 0.5
    if training and ratio != 0.0:
        raise Unsupported("Dropout in training mode (training_mode=True, ratio > 0)")
    x = ins[0]
    mask = cx.op("full", [], {"shape": tuple(x.shape), "value": 1.0, "dtype": dtypes.bool_})
    return [x, mask]


def _exp(cx, x):
    return cx.op("exp", [x])


def _where(cx, c, x, y):
    return cx.op("where", [c, x, y])


@conv("Tan")
def _tan(cx, ins, a):
    x = ins[0]
    return cx.op("div", [cx.op("sin", [x]), cx.op("cos", [x])])


@conv("Sinh", "Cosh")
def _sinh(cx, ins, a):
    x = ins[0]
    e, ne = _exp(cx, x), _exp(cx, cx.op("neg", [x]))
    s = cx.op("sub" if cx.node.op_type == "Sinh" else "add", [e, ne])
    return cx.op("mul", [s, _c(cx, 0.5, x)])


def _sqrt_sq(cx, x, sign):
    return cx.op("sqrt", [cx.op("add" if sign > 0 else "sub", [cx.op("mul", [x, x]), _c(cx, 1.0, x)])])


@conv("Asinh", "Acosh")
def _asinh(cx, ins, a):
    x = ins[0]
    return cx.op("log", [cx.op("add", [x, _sqrt_sq(cx, x, 1 if cx.node.op_type == "Asinh" else -1)])])


@conv("Atanh")
def _atanh(cx, ins, a):
    x = ins[0]
    one = _c(cx, 1.0, x)
    r = cx.op("div", [cx.op("add", [one, x]), cx.op("sub", [one, x])])
    return cx.op("mul", [cx.op("log", [r]), _c(cx, 0.5, x)])


def _atan(cx, x):
    # atan(x) = 2 atan(x / (1 + sqrt(1 + x^2))), applied three times brings |x| below
    # tan(pi/16); a 6-term odd series is then exact to float32 precision
    one = _c(cx, 1.0, x)
    for _ in range(3):
        x = cx.op("div", [x, cx.op("add", [one, _sqrt_sq(cx, x, 1)])])
    x2 = cx.op("mul", [x, x])
    acc = _c(cx, 1.0 / 13, x)
    for k in (11, 9, 7, 5, 3, 1):
        acc = cx.op("add", [cx.op("mul", [acc, cx.op("neg", [x2])]), _c(cx, 1.0 / k, x)])
    return cx.op("mul", [cx.op("mul", [acc, x]), _c(cx, 8.0, x)])


@conv("Atan")
def _atan_conv(cx, ins, a):
    return _atan(cx, ins[0])


@conv("Asin", "Acos")
def _asin(cx, ins, a):
    x = ins[0]
    one = _c(cx, 1.0, x)
    # asin(x) = 2 atan(x / (1 + sqrt(1 - x^2))), finite at |x| = 1
    s = cx.op("sqrt", [cx.op("sub", [one, cx.op("mul", [x, x])])])
    r = cx.op("mul", [_atan(cx, cx.op("div", [x, cx.op("add", [one, s])])), _c(cx, 2.0, x)])
    if cx.node.op_type == "Acos":
        r = cx.op("sub", [_c(cx, math.pi / 2, x), r])
    return r


@conv("Round")
def _round(cx, ins, a):
    # round half to even: floor(x + 0.5), minus one where that hit an odd number from a tie
    x = ins[0]
    f = cx.op("floor", [cx.op("add", [x, _c(cx, 0.5, x)])])
    tie = cx.op("eq", [cx.op("sub", [f, x]), _c(cx, 0.5, x)])
    odd = cx.op("ne", [cx.op("mod", [f, _c(cx, 2.0, x)]), _c(cx, 0.0, x)])
    return _where(cx, cx.op("logical_and", [tie, odd]), cx.op("sub", [f, _c(cx, 1.0, x)]), f)


@conv("IsNaN")
def _isnan(cx, ins, a):
    return cx.op("ne", [ins[0], ins[0]])


@conv("IsInf")
def _isinf(cx, ins, a):
    x = ins[0]
    pos = cx.op("eq", [x, _c(cx, math.inf, x)])
    neg = cx.op("eq", [x, _c(cx, -math.inf, x)])
    dp, dn = a.get("detect_positive", 1), a.get("detect_negative", 1)
    if dp and dn:
        return cx.op("logical_or", [pos, neg])
    if dp:
        return pos
    if dn:
        return neg
    return cx.op("logical_and", [pos, neg])


def _act(fn):
    def f(cx, ins, a):
        return fn(cx, ins[0], a)
    return f


def _elu(cx, x, a, alpha=None, scale=1.0):
    alpha = a.get("alpha", 1.0) if alpha is None else alpha
    neg = cx.op("mul", [cx.op("sub", [_exp(cx, x), _c(cx, 1.0, x)]), _c(cx, alpha, x)])
    y = _where(cx, cx.op("gt", [x, _c(cx, 0.0, x)]), x, neg)
    return y if scale == 1.0 else cx.op("mul", [y, _c(cx, scale, x)])


CONVERTERS["Elu"] = _act(lambda cx, x, a: _elu(cx, x, a))
CONVERTERS["Selu"] = _act(lambda cx, x, a: _elu(cx, x, a, a.get("alpha", 1.67326319217681884765625),
                                                 a.get("gamma", 1.05070102214813232421875)))


@conv("Celu")
def _celu(cx, ins, a):
    x = ins[0]
    alpha = a.get("alpha", 1.0)
    e = cx.op("mul", [cx.op("sub", [_exp(cx, cx.op("div", [x, _c(cx, alpha, x)])), _c(cx, 1.0, x)]),
                      _c(cx, alpha, x)])
    return cx.op("add", [cx.op("relu", [x]), cx.op("minimum", [_c(cx, 0.0, x), e])])


@conv("LeakyRelu")
def _leaky(cx, ins, a):
    x = ins[0]
    return _where(cx, cx.op("ge", [x, _c(cx, 0.0, x)]), x,
                  cx.op("mul", [x, _c(cx, a.get("alpha", 0.01), x)]))


@conv("PRelu")
def _prelu(cx, ins, a):
    x, slope = ins[0], ins[1]
    return _where(cx, cx.op("lt", [x, _c(cx, 0, x)]), cx.op("mul", [x, slope]), x)


@conv("ThresholdedRelu")
def _trelu(cx, ins, a):
    x = ins[0]
    return _where(cx, cx.op("gt", [x, _c(cx, a.get("alpha", 1.0), x)]), x, _c(cx, 0.0, x))


@conv("HardSigmoid")
def _hsig(cx, ins, a):
    x = ins[0]
    y = cx.op("add", [cx.op("mul", [x, _c(cx, a.get("alpha", 0.2), x)]), _c(cx, a.get("beta", 0.5), x)])
    return cx.op("clamp", [y], {"min": 0.0, "max": 1.0})


@conv("HardSwish")
def _hswish(cx, ins, a):
    x = ins[0]
    y = cx.op("add", [cx.op("mul", [x, _c(cx, 1 / 6, x)]), _c(cx, 0.5, x)])
    return cx.op("mul", [x, cx.op("clamp", [y], {"min": 0.0, "max": 1.0})])


def _softplus(cx, x):
    # log(1 + exp(x)) = relu(x) + log(1 + exp(-|x|)): never overflows
    t = cx.op("log", [cx.op("add", [_c(cx, 1.0, x), _exp(cx, cx.op("neg", [cx.op("abs", [x])]))])])
    return cx.op("add", [cx.op("relu", [x]), t])


CONVERTERS["Softplus"] = _act(lambda cx, x, a: _softplus(cx, x))
CONVERTERS["Softsign"] = _act(lambda cx, x, a: cx.op(
    "div", [x, cx.op("add", [_c(cx, 1.0, x), cx.op("abs", [x])])]))
CONVERTERS["Mish"] = _act(lambda cx, x, a: cx.op("mul", [x, cx.op("tanh", [_softplus(cx, x)])]))


@conv("Swish")
def _swish(cx, ins, a):
    x = ins[0]
    alpha = a.get("alpha", 1.0)
    s = cx.op("sigmoid", [x if alpha == 1.0 else cx.op("mul", [x, _c(cx, alpha, x)])])
    return cx.op("mul", [x, s])


@conv("Gelu")
def _gelu(cx, ins, a):
    return cx.op("gelu", [_float(ins[0], "Gelu")], {"approximate": a.get("approximate", "none")})


@conv("Shrink")
def _shrink(cx, ins, a):
    x = ins[0]
    lam, bias = a.get("lambd", 0.5), a.get("bias", 0.0)
    lo = cx.op("lt", [x, _c(cx, -lam, x)])
    hi = cx.op("gt", [x, _c(cx, lam, x)])
    return _where(cx, lo, cx.op("add", [x, _c(cx, bias, x)]),
                  _where(cx, hi, cx.op("sub", [x, _c(cx, bias, x)]), _c(cx, 0, x)))


@conv("Clip")
def _clip(cx, ins, a):
    x = ins[0]
    if cx.opset < 11 or len(ins) == 1 and ("min" in a or "max" in a):
        return cx.op("clamp", [x], {"min": a.get("min"), "max": a.get("max")})
    lo, hi = (ins[1] if cx.has(1) else None), (ins[2] if cx.has(2) else None)
    if all(v is None or v.kind == "const" for v in (lo, hi)) and x.dtype.is_float:
        f = (lambda v: None if v is None else float(np.asarray(v.data).reshape(-1)[0]))
        return cx.op("clamp", [x], {"min": f(lo), "max": f(hi)})
    if lo is not None:
        x = cx.op("maximum", [x, lo])
    if hi is not None:
        x = cx.op("minimum", [x, hi])
    return x


# -- binary

def _trunc_div(cx, x, y):
    """Integer division rounding toward zero (C and ONNX) from the IR's floor division."""
    q = cx.op("div", [x, y])
    if not x.dtype.is_signed:
        return q
    r = cx.op("mod", [x, y])
    zero = _c(cx, 0, x)
    fix = cx.op("logical_and", [cx.op("ne", [r, zero]),
                                cx.op("logical_xor", [cx.op("lt", [x, zero]), cx.op("lt", [y, zero])])])
    return _where(cx, fix, cx.op("add", [q, _c(cx, 1, x)]), q)


def _binary(ember_name):
    def f(cx, ins, a):
        x, y = ins[0], ins[1]
        if ember_name == "div" and not x.dtype.is_float:
            return _trunc_div(cx, x, y)
        return cx.op(ember_name, [x, y])
    return f


for _t, _e in {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Equal": "eq",
               "Less": "lt", "LessOrEqual": "le", "Greater": "gt", "GreaterOrEqual": "ge",
               "And": "logical_and", "Or": "logical_or", "Xor": "logical_xor"}.items():
    CONVERTERS[_t] = _binary(_e)


@conv("Pow")
def _pow(cx, ins, a):
    x, y = ins[0], ins[1]
    if y.kind == "const" and y.data is not None and y.data.size == 1 and float(y.data.reshape(-1)[0]) == 2.0:
        return cx.op("mul", [x, x])
    return cx.op("pow", [x, cx.cast(y, x.dtype)])


@conv("Mod")
def _mod(cx, ins, a):
    x, y = ins[0], ins[1]
    if x.dtype.is_float or not a.get("fmod", 0):
        r = cx.op("mod", [x, y])
        if x.dtype.is_float and not a.get("fmod", 0):
            # Python-style: the remainder takes the divisor's sign
            zero = _c(cx, 0.0, x)
            fix = cx.op("logical_and", [cx.op("ne", [r, zero]), cx.op(
                "logical_xor", [cx.op("lt", [r, zero]), cx.op("lt", [y, zero])])])
            r = _where(cx, fix, cx.op("add", [r, y]), r)
        return r
    # fmod on integers: the remainder takes the dividend's sign
    return cx.op("sub", [x, cx.op("mul", [_trunc_div(cx, x, y), y])])


def _variadic(ember_name):
    def f(cx, ins, a):
        vals = [v for v in ins if v is not None]
        out = vals[0]
        for v in vals[1:]:
            out = cx.op(ember_name, [out, v])
        if cx.node.op_type == "Mean":
            out = cx.op("div", [out, _c(cx, float(len(vals)), out)])
        return out
    return f


CONVERTERS["Max"] = _variadic("maximum")
CONVERTERS["Min"] = _variadic("minimum")
CONVERTERS["Sum"] = _variadic("add")
CONVERTERS["Mean"] = _variadic("add")


@conv("Where")
def _where_conv(cx, ins, a):
    return _where(cx, ins[0], ins[1], ins[2])


@conv("Cast")
def _cast(cx, ins, a):
    return cx.cast(ins[0], onnx_dtype(a["to"]))


@conv("CastLike")
def _castlike(cx, ins, a):
    return cx.cast(ins[0], ins[1].dtype)


# ---------------------------------------------------------------- constants and shapes

@conv("Constant")
def _constant(cx, ins, a):
    if "value" in a:
        arr = a["value"]
        return cx.const_array(arr, dtypes.from_numpy(arr.dtype) if arr.dtype != np.float32 else dtypes.f32)
    for k, dt in (("value_float", dtypes.f32), ("value_floats", dtypes.f32), ("value_int", dtypes.i64),
                  ("value_ints", dtypes.i64)):
        if k in a:
            return cx.const_array(np.array(a[k], dtype=dt.np), dt)
    raise Unsupported(f"Constant with {', '.join(a) or 'no value'} (only tensors and numbers)")


@conv("Shape")
def _shape(cx, ins, a):
    shape = list(ins[0].shape)
    n = len(shape)
    start, end = a.get("start", 0), a.get("end", n)
    start = min(max(start + n if start < 0 else start, 0), n)
    end = min(max(end + n if end < 0 else end, 0), n)
    vals = shape[start:end]
    arr = np.empty(len(vals), dtype=object)
    arr[:] = vals
    if _has_sym(arr):
        return Known(arr, dtypes.i64)
    return cx.const_array(np.array(vals, dtype=np.int64), dtypes.i64)


@conv("Size")
def _size(cx, ins, a):
    n = prod(ins[0].shape)
    if isinstance(n, SymExpr):
        return Known(np.array(n, dtype=object), dtypes.i64)
    return cx.const_array(np.array(n, dtype=np.int64), dtypes.i64)


@conv("ConstantOfShape")
def _const_of_shape(cx, ins, a):
    shape = cx.ints(0, "shape")
    val = a.get("value")
    arr = np.asarray(val) if val is not None else np.zeros(1, np.float32)
    dt = dtypes.from_numpy(arr.dtype)
    if not any(isinstance(d, SymExpr) for d in shape):
        return cx.const_array(np.full(shape, arr.reshape(-1)[0], dtype=dt.np), dt)
    return cx.op("full", [], {"shape": tuple(shape), "value": float(arr.reshape(-1)[0]), "dtype": dt})


@conv("EyeLike")
def _eyelike(cx, ins, a):
    x = ins[0]
    if not x.type.is_static:
        raise Unsupported("EyeLike on a dynamic shape")
    dt = onnx_dtype(a["dtype"]) if "dtype" in a else x.dtype
    return cx.const_array(np.eye(x.shape[0], x.shape[1], k=a.get("k", 0), dtype=dt.np), dt)


@conv("Range")
def _range(cx, ins, a):
    start, limit, delta = (cx.scalar(i) for i in range(3))
    dt = ins[0].dtype if isinstance(cx.raw[0], Value) else cx.raw[0].dtype
    if all(isinstance(v, (int, float, np.number)) for v in (start, limit, delta)):
        n = max(int(math.ceil((limit - start) / delta)), 0)
        return cx.const_array((start + np.arange(n) * delta).astype(dt.np), dt)
    if delta != 1 or not isinstance(start, int):
        raise Unsupported("Range with a symbolic limit and a step other than 1")
    return cx.op("arange", [], {"start": start, "end": limit, "step": 1, "dtype": dt})


# ---------------------------------------------------------------- data movement

def _reshape_target(x, shape, allowzero):
    shape = list(shape)
    out = [x.shape[k] if (isinstance(s, int) and s == 0 and not allowzero) else s
           for k, s in enumerate(shape)]
    if any(isinstance(s, int) and s == -1 for s in out):
        k = next(i for i, s in enumerate(out) if isinstance(s, int) and s == -1)
        rest = prod([s for i, s in enumerate(out) if i != k])
        out[k] = floordiv(prod(x.shape), rest)
    return tuple(out)


@conv("Reshape")
def _reshape_conv(cx, ins, a):
    x = ins[0]
    shape = cx.ints(1, "shape") if cx.opset >= 5 or cx.has(1) else list(a["shape"])
    return _reshape(cx, x, _reshape_target(x, shape, a.get("allowzero", 0)))


@conv("Flatten")
def _flatten(cx, ins, a):
    x = ins[0]
    ax = a.get("axis", 1)
    ax = ax + _rank(x) if ax < 0 else ax
    return _reshape(cx, x, (prod(x.shape[:ax]), prod(x.shape[ax:])))


@conv("Transpose")
def _transpose(cx, ins, a):
    x = ins[0]
    perm = a.get("perm") or list(range(_rank(x)))[::-1]
    return _permute(cx, x, perm)


@conv("Squeeze")
def _squeeze(cx, ins, a):
    x = ins[0]
    axes = _attr_or_input_axes(cx, a, 1)
    if axes is None:
        axes = [k for k, d in enumerate(x.shape) if d == 1]
    axes = {_axis(v, _rank(x)) for v in axes}
    for k in axes:
        if x.shape[k] != 1:
            raise ShapeError(f"Squeeze: dim {k} has size {x.shape[k]}, not 1")
    return _reshape(cx, x, [d for k, d in enumerate(x.shape) if k not in axes])


@conv("Unsqueeze")
def _unsqueeze_conv(cx, ins, a):
    return _unsqueeze(cx, ins[0], _attr_or_input_axes(cx, a, 1))


@conv("Concat")
def _concat(cx, ins, a):
    vals = [v for v in ins if v is not None]
    vals = [v for v in vals if not (v.type.is_static and 0 in v.shape)] or vals[:1]
    return vals[0] if len(vals) == 1 else cx.op("concat", vals, {"axis": a["axis"]})


@conv("Expand")
def _expand(cx, ins, a):
    x = ins[0]
    shape = cx.ints(1, "shape")
    out = broadcast_shapes(tuple(x.shape), tuple(shape))
    if tuple(out) == tuple(x.shape):
        return x
    return cx.op("expand", [x], {"shape": out})


@conv("Tile")
def _tile(cx, ins, a):
    x = ins[0]
    reps = cx.ints(1, "repeats")
    if all(r == 1 for r in reps):
        return x
    inter, big, out = [], [], []
    for d, r in zip(x.shape, reps):
        inter += [1, d]
        big += [r, d]
        out.append(r * d)
    y = cx.op("expand", [_reshape(cx, x, inter)], {"shape": tuple(big)})
    return _reshape(cx, y, out)


def _slice_axis(cx, x, ax, start, end, step):
    d = x.shape[ax]
    if isinstance(d, int) and step > 0 and any(isinstance(v, SymExpr) for v in (start, end)):
        # a symbolic bound (x[:, :seq] on a fixed-size table): taken to lie within the dim
        s = start if isinstance(start, SymExpr) else min(max(start + d if start < 0 else start, 0), d)
        e = end if isinstance(end, SymExpr) else min(max(end + d if end < 0 else end, 0), d)
        return cx.op("slice", [x], {"axis": ax, "start": s, "end": e, "step": step})
    if isinstance(d, int):
        if step > 0:
            s, e, _ = slice(start, end, step).indices(d)
            e = max(e, s)
            if s == 0 and e == d and step == 1:
                return x
            if s == e:
                raise Unsupported("Slice producing an empty tensor")
            return cx.op("slice", [x], {"axis": ax, "start": s, "end": e, "step": step})
        idx = list(range(d))[slice(start, end, step)]
        if not idx:
            raise Unsupported("Slice producing an empty tensor")
        return cx.op("index_select", [x, cx.const_array(np.array(idx, np.int64), dtypes.i64)], {"axis": ax})
    if step < 1:
        raise Unsupported("Slice with a negative step along a dynamic dim")

    def norm(v, default):
        if isinstance(v, SymExpr):
            return v
        if v >= INT_MAX or v <= -INT_MAX:
            return default
        return d + v if v < 0 else v
    s, e = norm(start, 0 if start <= 0 else d), norm(end, d if end > 0 else 0)
    if isinstance(s, int) and s == 0 and e is d and step == 1:
        return x
    return cx.op("slice", [x], {"axis": ax, "start": s, "end": e, "step": step})


@conv("Slice")
def _slice(cx, ins, a):
    x = ins[0]
    if cx.opset < 10 and "starts" in a:
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = cx.ints(1, "starts"), cx.ints(2, "ends")
        axes = cx.ints(3, "axes") if cx.has(3) else None
        steps = cx.ints(4, "steps") if cx.has(4) else None
    axes = list(axes) if axes is not None else list(range(len(starts)))
    steps = list(steps) if steps is not None else [1] * len(starts)
    if x.kind == "const" and x.data is not None and not any(
            isinstance(v, SymExpr) for v in starts + ends):
        # constants slice in numpy (empty results included: they feed shape arithmetic)
        return cx.const_array(_sym_slice(x.data, starts, ends, axes, steps), x.dtype)
    for s, e, ax, st in zip(starts, ends, axes, steps):
        x = _slice_axis(cx, x, _axis(ax, _rank(x)), s, e, st)
    return x


@conv("Split")
def _split(cx, ins, a):
    x = ins[0]
    ax = _axis(a.get("axis", 0), _rank(x))
    n_out = len(cx.node.output)
    d = x.shape[ax]
    if cx.has(1):
        sizes = cx.ints(1, "split")
    elif "split" in a:
        sizes = list(a["split"])
    else:
        n = a.get("num_outputs", n_out)
        if not isinstance(d, int):
            if n == 1:
                return [x]
            sizes = [floordiv(d, n)] * n
        else:
            chunk = -(-d // n)
            sizes = [min(chunk, d - k * chunk) for k in range(n)]
    outs, start = [], 0
    for s in sizes:
        outs.append(x if s == d else cx.op("slice", [x], {"axis": ax, "start": start, "end": start + s, "step": 1}))
        start = start + s
    return outs


@conv("Gather")
def _gather(cx, ins, a):
    x, idx = ins[0], ins[1]
    ax = _axis(a.get("axis", 0), _rank(x))
    if idx.dtype not in (dtypes.i64, dtypes.i32):
        idx = cx.cast(idx, dtypes.i64)
    flat = _reshape(cx, idx, (prod(idx.shape),))
    y = cx.op("index_select", [x, flat], {"axis": ax})
    return _reshape(cx, y, tuple(x.shape[:ax]) + tuple(idx.shape) + tuple(x.shape[ax + 1:]))


@conv("GatherElements")
def _gather_elements(cx, ins, a):
    x, idx = ins[0], ins[1]
    return cx.op("gather", [x, cx.cast(idx, dtypes.i64) if idx.dtype not in (dtypes.i64, dtypes.i32) else idx],
                 {"axis": a.get("axis", 0)})


def _pad_index(mode, n, lo, hi):
    """Source index along one dim for reflect / edge / wrap padding."""
    out = []
    for j in range(-lo, n + hi):
        if mode == "edge":
            out.append(min(max(j, 0), n - 1))
        elif mode == "wrap":
            out.append(j % n)
        else:  # reflect (the edge value is not repeated)
            period = 2 * (n - 1) if n > 1 else 1
            k = j % period if period else 0
            out.append(k if k < n else period - k)
    return out


@conv("Pad")
def _pad(cx, ins, a):
    x = ins[0]
    mode = a.get("mode", "constant")
    if cx.opset < 11:
        pads, value = list(a.get("pads", [])), a.get("value", 0.0)
        axes = list(range(_rank(x)))
    else:
        pads = cx.ints(1, "pads")
        value = cx.scalar(2, 0) if cx.has(2) else 0
        axes = [_axis(v, _rank(x)) for v in cx.ints(3, "axes")] if cx.has(3) else list(range(_rank(x)))
    n = len(axes)
    full = [0] * (2 * _rank(x))
    for k, ax in enumerate(axes):
        full[2 * ax], full[2 * ax + 1] = pads[k], pads[n + k]
    if mode == "constant":
        if all(p == 0 for p in full):
            return x
        return cx.op("pad", [x], {"pads": tuple(full), "value": float(value)})
    if not x.type.is_static:
        raise Unsupported(f"Pad mode {mode!r} on a dynamic shape")
    for ax in range(_rank(x)):
        lo, hi = full[2 * ax], full[2 * ax + 1]
        if lo or hi:
            if lo < 0 or hi < 0:
                raise Unsupported(f"Pad mode {mode!r} with negative pads")
            idx = _pad_index(mode, x.shape[ax], lo, hi)
            x = cx.op("index_select", [x, cx.const_array(np.array(idx, np.int64), dtypes.i64)], {"axis": ax})
    return x


@conv("DepthToSpace")
def _d2s(cx, ins, a):
    x = ins[0]
    b = a["blocksize"]
    n, c, h, w = x.shape
    if a.get("mode", "DCR") == "DCR":
        y = _permute(cx, _reshape(cx, x, (n, b, b, c // (b * b), h, w)), (0, 3, 4, 1, 5, 2))
    else:
        y = _permute(cx, _reshape(cx, x, (n, c // (b * b), b, b, h, w)), (0, 1, 4, 2, 5, 3))
    return _reshape(cx, y, (n, c // (b * b), h * b, w * b))


@conv("SpaceToDepth")
def _s2d(cx, ins, a):
    x = ins[0]
    b = a["blocksize"]
    n, c, h, w = x.shape
    perm = (0, 1, 3, 5, 2, 4) if a.get("mode", "DCR") == "CRD" else (0, 3, 5, 1, 2, 4)
    y = _permute(cx, _reshape(cx, x, (n, c, h // b, b, w // b, b)), perm)
    return _reshape(cx, y, (n, c * b * b, h // b, w // b))


@conv("Trilu")
def _trilu(cx, ins, a):
    x = ins[0]
    k = cx.scalar(1, 0)
    rows, cols = x.shape[-2], x.shape[-1]
    i = _reshape(cx, cx.op("arange", [], {"end": rows}), (rows, 1))
    j = cx.op("arange", [], {"end": cols})
    diff = cx.op("sub", [j, i])
    kk = cx.const(int(k), dtypes.i64)
    mask = cx.op("ge" if a.get("upper", 1) else "le", [diff, kk])
    return _where(cx, mask, x, _c(cx, 0, x))


@conv("OneHot")
def _onehot(cx, ins, a):
    idx, vals = ins[0], ins[2]
    depth = int(cx.scalar(1))
    rank = _rank(idx) + 1
    ax = _axis(a.get("axis", -1), rank)
    idx = cx.cast(idx, dtypes.i64)
    idx = _where(cx, cx.op("lt", [idx, cx.const(0, dtypes.i64)]),
                 cx.op("add", [idx, cx.const(depth, dtypes.i64)]), idx)
    idx = _unsqueeze(cx, idx, [ax])
    shape = [1] * rank
    shape[ax] = depth
    rng = _reshape(cx, cx.op("arange", [], {"end": depth}), shape)
    hit = cx.op("eq", [idx, rng])
    off = _reshape(cx, cx.op("slice", [vals], {"axis": 0, "start": 0, "end": 1}), ())
    on = _reshape(cx, cx.op("slice", [vals], {"axis": 0, "start": 1, "end": 2}), ())
    return _where(cx, hit, on, off)


# ---------------------------------------------------------------- reductions and normalizations

def _reduce_axes(cx, ins, a, x):
    axes = _attr_or_input_axes(cx, a, 1)
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return None
        axes = list(range(_rank(x)))
    return [_axis(v, _rank(x)) for v in axes]


def _reduce_empty(cx, x, axes, keep, kind):
    """A reduction over a zero-length dim: every output element is the reduction's identity
    (a constant; the empty input is never read)."""
    shape = [1 if k in axes else d for k, d in enumerate(x.shape) if keep or k not in axes]
    if not all(isinstance(d, int) and d > 0 for d in shape):
        raise Unsupported("reduction over an empty dim into an empty or dynamic result")
    if x.dtype is dtypes.bool_:
        ident = {"max": False, "min": True}.get(kind)
    else:
        ident = {"sum": 0, "l1": 0, "l2": 0, "sumsquare": 0, "prod": 1, "max": _lowest(x),
                 "min": _highest(x), "logsum": -math.inf, "logsumexp": -math.inf,
                 "mean": math.nan}.get(kind)
    if ident is None or (not x.dtype.is_float and isinstance(ident, float) and not math.isfinite(ident)):
        raise Unsupported(f"Reduce {kind} over an empty dim of {x.dtype}")
    return cx.const_array(np.full(shape, ident, dtype=x.dtype.np), x.dtype)


def _reduce(kind):
    def f(cx, ins, a):
        x = ins[0]
        axes = _reduce_axes(cx, ins, a, x)
        if axes is None:
            return x
        if any(x.shape[k] == 0 for k in axes):
            return _reduce_empty(cx, x, axes, bool(a.get("keepdims", 1)), kind)
        keep = bool(a.get("keepdims", 1))
        attrs = {"axes": tuple(axes), "keepdims": keep}
        if kind == "mean" and not x.dtype.is_float:
            return cx.cast(cx.op("div", [cx.op("sum", [x], attrs), cx.const(int(prod([x.shape[k] for k in axes])), x.dtype)]), x.dtype)
        if kind in ("sum", "mean", "max", "min", "prod"):
            return cx.op(kind, [x], attrs)
        if kind == "l1":
            return cx.op("sum", [cx.op("abs", [x])], attrs)
        if kind == "sumsquare":
            return cx.op("sum", [cx.op("mul", [x, x])], attrs)
        if kind == "l2":
            return cx.cast(cx.op("sqrt", [cx.cast(cx.op("sum", [cx.op("mul", [x, x])], attrs), dtypes.f32
                                                   if not x.dtype.is_float else x.dtype)]), x.dtype)
        if kind == "logsum":
            return cx.op("log", [cx.op("sum", [x], attrs)])
        if kind == "logsumexp":
            m = cx.op("max", [x], {"axes": tuple(axes), "keepdims": True})
            # an all -inf slice gives -inf, not nan
            m = _where(cx, cx.op("eq", [m, _c(cx, -math.inf, m)]), _c(cx, 0.0, m), m)
            s = cx.op("sum", [_exp(cx, cx.op("sub", [x, m]))], attrs)
            mk = m if keep else _reshape(cx, m, [d for k, d in enumerate(x.shape) if k not in axes])
            return cx.op("add", [cx.op("log", [s]), mk])
        raise AssertionError(kind)
    return f


for _t, _k in {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "max", "ReduceMin": "min",
               "ReduceProd": "prod", "ReduceL1": "l1", "ReduceL2": "l2", "ReduceSumSquare": "sumsquare",
               "ReduceLogSum": "logsum", "ReduceLogSumExp": "logsumexp"}.items():
    CONVERTERS[_t] = _reduce(_k)


def _reverse(cx, x, ax):
    d = x.shape[ax]
    if not isinstance(d, int):
        raise Unsupported("select_last_index on a dynamic dim")
    return cx.op("index_select", [x, cx.const_array(np.arange(d - 1, -1, -1, dtype=np.int64), dtypes.i64)],
                 {"axis": ax})


@conv("ArgMax", "ArgMin")
def _argmax(cx, ins, a):
    x = ins[0]
    ax = _axis(a.get("axis", 0), _rank(x))
    keep = bool(a.get("keepdims", 1))
    last = a.get("select_last_index", 0)
    if cx.node.op_type == "ArgMin":
        if not x.dtype.is_signed and not x.dtype.is_float:
            raise Unsupported("ArgMin on unsigned integers")
        x = cx.op("neg", [x])
    if last:
        x = _reverse(cx, x, ax)
    r = cx.op("argmax", [x], {"axis": ax, "keepdims": keep})
    if last:
        r = cx.op("sub", [cx.const(int(x.shape[ax]) - 1, dtypes.i64), r])
    return r


def _softmax_like(ember_name):
    def f(cx, ins, a):
        x = ins[0]
        if cx.opset >= 13:
            return cx.op(ember_name, [x], {"axis": a.get("axis", -1)})
        ax = _axis(a.get("axis", 1), _rank(x))  # before opset 13: over the flattened tail
        flat = _reshape(cx, x, (prod(x.shape[:ax]), prod(x.shape[ax:])))
        return _reshape(cx, cx.op(ember_name, [flat], {"axis": 1}), x.shape)
    return f


CONVERTERS["Softmax"] = _softmax_like("softmax")
CONVERTERS["LogSoftmax"] = _softmax_like("log_softmax")


@conv("Hardmax")
def _hardmax(cx, ins, a):
    x = ins[0]
    if cx.opset < 13:
        raise Unsupported("Hardmax before opset 13")
    ax = _axis(a.get("axis", -1), _rank(x))
    am = cx.op("argmax", [x], {"axis": ax, "keepdims": True})
    shape = [1] * _rank(x)
    shape[ax] = x.shape[ax]
    rng = _reshape(cx, cx.op("arange", [], {"end": x.shape[ax]}), shape)
    return cx.cast(cx.op("eq", [am, rng]), x.dtype)


def _moments(cx, x, axes):
    mean = cx.op("mean", [x], {"axes": tuple(axes), "keepdims": True})
    d = cx.op("sub", [x, mean])
    var = cx.op("mean", [cx.op("mul", [d, d])], {"axes": tuple(axes), "keepdims": True})
    return mean, d, var


@conv("LayerNormalization")
def _layer_norm(cx, ins, a):
    x, w, b = ins[0], ins[1], ins[2]
    ax = _axis(a.get("axis", -1), _rank(x))
    eps = a.get("epsilon", 1e-5)
    norm_shape = tuple(x.shape[ax:])
    n_out = len([o for o in cx.node.output if o])
    if n_out == 1 and tuple(w.shape) == norm_shape and (b is None or tuple(b.shape) == norm_shape) \
            and x.dtype.is_float and w.dtype is x.dtype:
        return cx.op("layer_norm", [x, w] + ([b] if b is not None else []), {"axis": ax, "eps": eps})
    xf = cx.cast(x, dtypes.f32) if x.dtype is not dtypes.f64 else x
    axes = list(range(ax, _rank(x)))
    mean, d, var = _moments(cx, xf, axes)
    inv = cx.op("rsqrt", [cx.op("add", [var, _c(cx, eps, var)])])
    y = cx.cast(cx.op("mul", [d, inv]), x.dtype)
    y = cx.op("mul", [y, w])
    if b is not None:
        y = cx.op("add", [y, b])
    return [y, mean, inv]


@conv("InstanceNormalization")
def _instance_norm(cx, ins, a):
    x, s, b = ins[0], ins[1], ins[2]
    axes = list(range(2, _rank(x)))
    mean, d, var = _moments(cx, x, axes)
    y = cx.op("mul", [d, cx.op("rsqrt", [cx.op("add", [var, _c(cx, a.get("epsilon", 1e-5), x)])])])
    shape = (x.shape[1],) + (1,) * (len(axes))
    return cx.op("add", [cx.op("mul", [y, _reshape(cx, s, shape)]), _reshape(cx, b, shape)])


@conv("LpNormalization")
def _lp_norm(cx, ins, a):
    x = ins[0]
    ax = _axis(a.get("axis", -1), _rank(x))
    p = a.get("p", 2)
    if p == 1:
        n = cx.op("sum", [cx.op("abs", [x])], {"axes": (ax,), "keepdims": True})
    else:
        n = cx.op("sqrt", [cx.op("sum", [cx.op("mul", [x, x])], {"axes": (ax,), "keepdims": True})])
    zero = _c(cx, 0.0, x)
    return _where(cx, cx.op("eq", [n, zero]), zero, cx.op("div", [x, n]))


@conv("MeanVarianceNormalization")
def _mvn(cx, ins, a):
    x = ins[0]
    axes = [_axis(v, _rank(x)) for v in a.get("axes", [0, 2, 3])]
    mean, d, var = _moments(cx, x, axes)
    return cx.op("div", [d, cx.op("add", [cx.op("sqrt", [var]), _c(cx, 1e-9, x)])])


@conv("BatchNormalization")
def _batch_norm(cx, ins, a):
    x, s, b, mean, var = ins[:5]
    if a.get("training_mode", 0) or len([o for o in cx.node.output if o]) > 1:
        return _batch_norm_training(cx, x, s, b, mean, var, a)
    if _rank(x) < 2:
        raise Unsupported("BatchNormalization of a rank-1 input")
    return cx.op("batch_norm", [x, mean, var, s, b], {"eps": a.get("epsilon", 1e-5)})


@conv("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(cx, ins, a):
    x = ins[0]
    axes = tuple(range(2, _rank(x)))
    return cx.op("mean" if cx.node.op_type == "GlobalAveragePool" else "max", [x],
                 {"axes": axes, "keepdims": True})


# ---------------------------------------------------------------- matmul, conv, pooling

@conv("MatMul")
def _matmul(cx, ins, a):
    return cx.op("matmul", [ins[0], ins[1]])


@conv("Gemm")
def _gemm(cx, ins, a):
    A, B, C = ins[0], ins[1], ins[2]
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    ta, tb = a.get("transA", 0), a.get("transB", 0)
    if ta:
        A = _permute(cx, A, (1, 0))
    if tb and alpha == 1.0 and (C is None or (tuple(C.shape) == (B.shape[0],) and beta == 1.0)):
        # the torch layout: Y = A @ B.T + C is one linear op (a GEMM with fused bias)
        return cx.op("linear", [A, B] + ([C] if C is not None else []))
    if tb:
        B = _permute(cx, B, (1, 0))
    y = cx.op("matmul", [A, B])
    if alpha != 1.0:
        y = cx.op("mul", [y, _c(cx, alpha, y)])
    if C is not None and beta != 0.0:
        y = cx.op("add", [y, C if beta == 1.0 else cx.op("mul", [C, _c(cx, beta, C)])])
    return y


def _spatial_pads(cx, a, x_shape, kernel, strides, dilations):
    """ONNX pads (begin..., end...) for the spatial dims, with auto_pad resolved."""
    nd = len(kernel)
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads_b, pads_e = [], []
        for k in range(nd):
            d = x_shape[k]
            if not isinstance(d, int):
                raise Unsupported("auto_pad SAME on a dynamic spatial dim")
            out = -(-d // strides[k])
            total = max((out - 1) * strides[k] + (kernel[k] - 1) * dilations[k] + 1 - d, 0)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads_b.append(lo)
            pads_e.append(total - lo)
        return pads_b, pads_e
    if auto == "VALID":
        return [0] * nd, [0] * nd
    pads = list(a.get("pads", [0] * (2 * nd)))
    return pads[:nd], pads[nd:]


def _to_2d(cx, x, nd):
    """A 1-D spatial input as 2-D (height 1)."""
    if nd == 1:
        n, c, w = x.shape
        return _reshape(cx, x, (n, c, 1, w))
    if nd != 2:
        raise Unsupported(f"{nd}-D spatial ops (only 1-D and 2-D)")
    return x


def _from_2d(cx, y, nd):
    return _reshape(cx, y, (y.shape[0], y.shape[1], y.shape[3])) if nd == 1 else y


def _conv_2d(cx, ins, a):
    x, w, b = ins[0], ins[1], ins[2]
    nd = _rank(x) - 2
    kernel = list(a.get("kernel_shape") or w.shape[2:])
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    pb, pe = _spatial_pads(cx, a, x.shape[2:], kernel, strides, dil)
    x2, w2 = _to_2d(cx, x, nd), _to_2d(cx, w, nd)
    if nd == 1:
        pb, pe, strides, dil = [0] + pb, [0] + pe, [1] + strides, [1] + dil
    if pb != pe:
        x2 = cx.op("pad", [x2], {"pads": (0, 0, 0, 0, pb[0], pe[0], pb[1], pe[1])})
        pb = [0, 0]
    y = cx.op("conv2d", [x2, w2] + ([b] if b is not None else []),
              {"stride": tuple(strides), "padding": tuple(pb), "dilation": tuple(dil),
               "groups": a.get("group", 1)})
    return _from_2d(cx, y, nd)


def _conv_transpose_2d(cx, ins, a):
    x, w, b = ins[0], ins[1], ins[2]
    nd = _rank(x) - 2
    g = a.get("group", 1)
    kernel = list(a.get("kernel_shape") or w.shape[2:])
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    opad = list(a.get("output_padding", [0] * nd))
    auto = a.get("auto_pad", "NOTSET")
    if "pads" in a or auto == "VALID" or (auto == "NOTSET" and "output_shape" not in a):
        pads = list(a.get("pads", [0] * (2 * nd)))
    else:
        # the pads that give the requested output size (auto_pad SAME: input * stride);
        # the odd unit of padding goes to the end for SAME_UPPER, else to the start
        if not all(isinstance(d, int) for d in x.shape[2:]):
            raise Unsupported("ConvTranspose with output_shape or auto_pad SAME on dynamic dims")
        want = list(a["output_shape"])[-nd:] if "output_shape" in a else \
            [x.shape[2 + i] * strides[i] for i in range(nd)]
        total = [strides[i] * (x.shape[2 + i] - 1) + opad[i] + (kernel[i] - 1) * dil[i] + 1 - want[i]
                 for i in range(nd)]
        upper = auto == "SAME_UPPER"
        pads = [t // 2 if upper else t - t // 2 for t in total] + \
               [t - t // 2 if upper else t // 2 for t in total]
    x2, w2 = _to_2d(cx, x, nd), _to_2d(cx, w, nd)
    if nd == 1:
        kernel, strides, dil, pads, opad = [1] + kernel, [1] + strides, [1] + dil, [0, pads[0], 0, pads[1]], [0] + opad
    n, c, h, wd = x2.shape
    sh, sw = strides
    # spread the input: insert stride-1 zeros between elements
    if sh > 1 or sw > 1:
        y = _reshape(cx, x2, (n, c, h, 1, wd, 1))
        y = cx.op("pad", [y], {"pads": (0, 0, 0, 0, 0, 0, 0, sh - 1, 0, 0, 0, sw - 1)})
        y = _reshape(cx, y, (n, c, h * sh, wd * sw))
        x2 = cx.op("slice", [cx.op("slice", [y], {"axis": 2, "start": 0, "end": (h - 1) * sh + 1})],
                   {"axis": 3, "start": 0, "end": (wd - 1) * sw + 1})
    kh, kw = kernel
    ph = [dil[0] * (kh - 1) - pads[0], dil[0] * (kh - 1) - pads[2] + opad[0]]
    pw = [dil[1] * (kw - 1) - pads[1], dil[1] * (kw - 1) - pads[3] + opad[1]]
    if min(ph + pw) < 0:
        raise Unsupported("ConvTranspose with pads larger than the kernel")
    x2 = cx.op("pad", [x2], {"pads": (0, 0, 0, 0, ph[0], ph[1], pw[0], pw[1])})
    # weight [Cin, Cout/g, kh, kw] -> flipped [Cout, Cin/g, kh, kw]
    cin, coutg = w2.shape[0], w2.shape[1]
    wf = _reverse(cx, _reverse(cx, w2, 2), 3)
    wf = _reshape(cx, wf, (g, cin // g, coutg, kh, kw))
    wf = _permute(cx, wf, (0, 2, 1, 3, 4))
    wf = _reshape(cx, wf, (g * coutg, cin // g, kh, kw))
    y = cx.op("conv2d", [x2, wf] + ([b] if b is not None else []),
              {"stride": (1, 1), "padding": (0, 0), "dilation": tuple(dil), "groups": g})
    return _from_2d(cx, y, nd)


def _pool(kind):
    def f(cx, ins, a):
        x = ins[0]
        if len([o for o in cx.node.output if o]) > 1:
            raise Unsupported("MaxPool's Indices output")
        nd = _rank(x) - 2
        kernel = list(a["kernel_shape"])
        strides = list(a.get("strides", [1] * nd))
        dil = list(a.get("dilations", [1] * nd))
        ceil = bool(a.get("ceil_mode", 0))
        pb, pe = _spatial_pads(cx, a, x.shape[2:], kernel, strides, dil)
        x2 = _to_2d(cx, x, nd)
        if nd == 1:
            kernel, strides, dil, pb, pe = [1] + kernel, [1] + strides, [1] + dil, [0] + pb, [0] + pe
        include = bool(a.get("count_include_pad", 0))
        if pb != pe and kind == "avg" and not include and not ceil and dil == [1, 1] \
                and x2.type.is_static:
            # mean over the valid part of each window = pooled sum / pooled count
            pads = (0, 0, 0, 0, pb[0], pe[0], pb[1], pe[1])
            attrs = {"kernel": tuple(kernel), "stride": tuple(strides), "padding": (0, 0),
                     "ceil_mode": False, "count_include_pad": True}
            num = cx.op("avg_pool2d", [cx.op("pad", [x2], {"pads": pads})], attrs)
            ones = cx.const_array(np.ones((1, 1) + tuple(x2.shape[2:]), x2.dtype.np), x2.dtype)
            den = cx.op("avg_pool2d", [cx.op("pad", [ones], {"pads": pads})], attrs)
            return _from_2d(cx, cx.op("div", [num, den]), nd)
        if pb != pe:
            if kind == "avg" and not include:
                raise Unsupported("AveragePool with asymmetric pads and count_include_pad=0")
            if ceil:
                raise Unsupported("pooling with asymmetric pads and ceil_mode")
            value = -math.inf if kind == "max" else 0.0
            x2 = cx.op("pad", [x2], {"pads": (0, 0, 0, 0, pb[0], pe[0], pb[1], pe[1]), "value": value})
            pb = [0, 0]
        attrs = {"kernel": tuple(kernel), "stride": tuple(strides), "padding": tuple(pb), "ceil_mode": ceil}
        if kind == "max":
            # integer max pools run in f32 (exact for 8/16-bit values): the max_pool2d lowering
            # pads with -inf, which has no integer form
            xi = x2 if x2.dtype.is_float else cx.cast(x2, dtypes.f32)
            y = cx.cast(cx.op("max_pool2d", [xi], {**attrs, "dilation": tuple(dil)}), x2.dtype)
        else:
            if dil != [1, 1]:
                raise Unsupported("AveragePool with dilations")
            y = cx.op("avg_pool2d", [x2], {**attrs, "count_include_pad": include})
        return _from_2d(cx, y, nd)
    return f




@conv("CumSum")
def _cumsum(cx, ins, a):
    x = ins[0]
    ax = _axis(int(cx.scalar(1)), _rank(x))
    n = x.shape[ax]
    if not isinstance(n, int):
        raise Unsupported("CumSum along a dynamic dim")
    # a prefix sum is a product with a triangular matrix of ones
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    rev, exc = a.get("reverse", 0), a.get("exclusive", 0)
    if not rev:
        m = (i < j) if exc else (i <= j)
    else:
        m = (i > j) if exc else (i >= j)
    work = x.dtype if x.dtype.is_float else dtypes.f64
    tri = cx.const_array(m.astype(work.np), work)
    perm = [k for k in range(_rank(x)) if k != ax] + [ax]
    xt = _permute(cx, cx.cast(x, work), perm)
    y = cx.op("matmul", [xt, tri])
    inv = [perm.index(k) for k in range(_rank(x))]
    return cx.cast(_permute(cx, y, inv), x.dtype)


# ---------------------------------------------------------------- Resize / Upsample

def _const_floats(cx, i, what):
    """Input ``i`` as a float64 numpy vector, known at compile time (NeedsConstant if not)."""
    d = cx.const_value(i)
    if d is None:
        cx.ints(i, what)  # raises NeedsConstant naming the graph inputs it comes from
    return np.asarray(d, dtype=np.float64).reshape(-1)


def _source_coords(n_in, n_out, scale, ctm, roi):
    """Input coordinate of each output position along one axis (ONNX Resize's
    coordinate_transformation_mode), and which positions fall outside a tf_crop_and_resize
    box (those take the extrapolation value)."""
    y = np.arange(n_out, dtype=np.float64)
    length = scale * n_in  # the output length before rounding: the modes divide by it
    outside = np.zeros(n_out, dtype=bool)
    if ctm == "align_corners":
        x = np.zeros(n_out) if length == 1 else y * (n_in - 1) / (length - 1)
    elif ctm == "asymmetric":
        x = y / scale
    elif ctm == "tf_crop_and_resize":
        lo, hi = roi
        x = np.full(n_out, (hi - lo) * (n_in - 1) / 2) if length == 1 else \
            y * (hi - lo) * (n_in - 1) / (length - 1)
        x = x + lo * (n_in - 1)
        outside = (x < 0) | (x > n_in - 1)
    elif ctm == "pytorch_half_pixel":
        x = np.full(n_out, -0.5) if length == 1 else (y + 0.5) / scale - 0.5
    elif ctm == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif ctm == "half_pixel_symmetric":
        # centres the rounded output canvas on the input (differs from half_pixel only
        # when scale * n_in is not an integer)
        x = n_in / 2 * (1 - n_out / length) + (y + 0.5) / scale - 0.5
    else:
        raise Unsupported(f"Resize coordinate_transformation_mode {ctm!r}")
    return x, outside


def _resize_taps(ratio, scale, mode, a, antialias):
    """Tap offsets (relative to the pixel left of the source coordinate) and their weights,
    [n_out, taps], for one axis. ``ratio`` in (0, 1] is the distance past that pixel."""
    if mode == "nearest":
        nm = a.get("nearest_mode", "round_prefer_floor")
        pick = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
                "floor": np.zeros_like(ratio, bool), "ceil": np.ones_like(ratio, bool)}.get(nm)
        if pick is None:
            raise Unsupported(f"Resize nearest_mode {nm!r}")
        pick = pick | (ratio == 1)  # an exact hit takes that pixel in every rounding mode
        return np.array([0, 1]), np.stack([~pick, pick], axis=1).astype(np.float64)
    # antialiasing widens the kernel by 1/scale when downsampling
    s = min(scale, 1.0) if antialias else 1.0
    reach = 2 if mode == "cubic" else 1
    first = int(np.floor(-reach / s)) + 1
    offs = np.arange(first, 1 - first + 1)
    d = np.abs(offs[None, :] - ratio[:, None]) * s
    if mode == "linear":
        w = np.clip(1 - d, 0, 1)
    else:  # the Keys cubic kernel with parameter A
        A = a.get("cubic_coeff_a", -0.75)
        w = np.where(d <= 1, ((A + 2) * d - (A + 3)) * d * d + 1,
                     np.where(d < 2, ((A * d - 5 * A) * d + 8 * A) * d - 4 * A, 0.0))
    if antialias:
        w = w / w.sum(axis=1, keepdims=True)
    return offs, w


def _resize_matrix(n_in, n_out, scale, mode, a, roi, antialias, opset):
    """Resize along one axis as a dense [n_out, n_in] matrix (the interpolation is linear in
    the input), plus the mask of rows that take the extrapolation value."""
    ctm = a.get("coordinate_transformation_mode", "half_pixel" if opset >= 11 else "asymmetric")
    x, outside = _source_coords(n_in, n_out, scale, ctm, roi)
    left = np.floor(x)
    ratio = x - left
    exact = ratio == 0
    left, ratio = np.where(exact, left - 1, left), np.where(exact, 1.0, ratio)  # ratio in (0, 1]
    offs, w = _resize_taps(ratio, scale, mode, a, antialias)
    idx = left[:, None].astype(np.int64) + offs[None, :]
    if a.get("exclude_outside", 0):
        w = np.where((idx < 0) | (idx >= n_in), 0.0, w)
        tot = w.sum(axis=1, keepdims=True)
        w = w / np.where(tot == 0, 1.0, tot)
    m = np.zeros((n_out, n_in))
    rows = np.repeat(np.arange(n_out), len(offs))
    np.add.at(m, (rows, np.clip(idx, 0, n_in - 1).reshape(-1)), w.reshape(-1))  # edge padding
    m[outside] = 0.0
    return m, outside


def _resize_axis(cx, x, ax, m, outside, mode, extrapolation):
    """Apply one axis' resize matrix m [n_out, n_in]. Nearest is one gather (exact for every
    dtype). Otherwise each output reads a few neighbours (2 taps for linear, 4 for cubic,
    more when antialiasing widens the kernel): one gather and multiply-add per tap, or a
    matmul with the axis moved last when the rows are dense anyway."""
    if mode == "nearest" and not outside.any():
        src = cx.const_array(m.argmax(axis=1).astype(np.int64), dtypes.i64)
        return cx.op("index_select", [x, src], {"axis": ax})
    if not x.dtype.is_float:
        raise Unsupported(f"Resize mode {mode!r} on {x.dtype} inputs")
    r = _rank(x)
    along = [1] * r
    along[ax] = m.shape[0]
    nz = m != 0
    taps = int(nz.sum(axis=1).max())
    if 0 < taps and 2 * taps <= m.shape[1]:
        cols = np.argsort(~nz, axis=1, kind="stable")[:, :taps]  # each row's taps first
        w = np.take_along_axis(m, cols, axis=1)                  # (0 where a row has fewer)
        y = None
        for t in range(taps):
            g = cx.op("index_select", [x, cx.const_array(cols[:, t].astype(np.int64), dtypes.i64)], {"axis": ax})
            term = cx.op("mul", [g, cx.const_array(w[:, t].reshape(along).astype(x.dtype.np), x.dtype)])
            y = term if y is None else cx.op("add", [y, term])
    else:
        perm = [k for k in range(r) if k != ax] + [ax]
        y = cx.op("matmul", [_permute(cx, x, perm), cx.const_array(m.T.astype(x.dtype.np), x.dtype)])
        y = _permute(cx, y, [perm.index(k) for k in range(r)])
    if outside.any():
        y = _where(cx, cx.const_array(outside.reshape(along)), _c(cx, extrapolation, y), y)
    return y


@conv("Resize", "Upsample")
def _resize(cx, ins, a):
    x = ins[0]
    r = _rank(x)
    shape = list(x.shape)

    def static(ax):  # only the resized dims need a known size
        if not isinstance(shape[ax], int):
            raise Unsupported(f"Resize along dynamic dim {ax} (the interpolation weights are "
                              f"built at compile time)")
        return shape[ax]
    mode = a.get("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear", "cubic"):
        raise Unsupported(f"Resize mode {mode!r}")
    mode = "linear" if mode == "bilinear" else mode
    axes = [_axis(v, r) for v in a.get("axes", range(r))]
    if len(set(axes)) != len(axes):
        raise ShapeError(f"Resize axes {list(a['axes'])} repeat an axis")
    old = cx.opset < 11 or cx.node.op_type == "Upsample"
    if old:
        scales_in = 1 if cx.node.op_type == "Resize" or cx.opset >= 9 else None
        scales = list(a["scales"]) if scales_in is None else list(_const_floats(cx, scales_in, "scales"))
        sizes, roi = None, None
        a = {**a, "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    else:
        roi = _const_floats(cx, 1, "roi") if cx.has(1) else np.zeros(0)
        scales = list(_const_floats(cx, 2, "scales")) if cx.has(2) else []
        sizes = cx.ints(3, "sizes") if cx.has(3) else None
        if not scales and sizes is None:
            raise ShapeError("Resize needs scales or sizes")
    full_scale = [1.0] * r
    out = list(shape)
    if sizes is not None:
        if len(sizes) != len(axes):
            raise ShapeError(f"Resize: {len(sizes)} sizes for {len(axes)} axes")
        policy = a.get("keep_aspect_ratio_policy", "stretch")
        if policy not in ("stretch", "not_larger", "not_smaller"):
            raise Unsupported(f"Resize keep_aspect_ratio_policy {policy!r}")
        # a size equal to the input's (a symbolic batch passed through) leaves that dim alone
        moved = [(ax, s) for ax, s in zip(axes, sizes) if policy != "stretch" or s != shape[ax]]
        if any(isinstance(s, SymExpr) for _, s in moved):
            raise Unsupported("Resize to a symbolic size")
        ratios = {ax: s / static(ax) for ax, s in moved}
        if policy != "stretch":
            s = (min if policy == "not_larger" else max)(ratios.values())
            ratios = {ax: s for ax in ratios}
            moved = [(ax, int(s * shape[ax] + 0.5)) for ax, _ in moved]  # round half up
        for ax, s in moved:
            full_scale[ax], out[ax] = ratios[ax], int(s)
    else:
        if len(scales) != len(axes):
            raise ShapeError(f"Resize: {len(scales)} scales for {len(axes)} axes")
        for ax, s in zip(axes, scales):
            if s <= 0:
                raise ShapeError(f"Resize: scale {s} must be positive")
            if s != 1.0:
                full_scale[ax], out[ax] = s, int(s * static(ax))
    box = {ax: (0.0, 1.0) for ax in range(r)}
    if roi is not None and roi.size:
        k = len(axes)
        if roi.size != 2 * k:
            raise ShapeError(f"Resize: roi has {roi.size} values, wants {2 * k}")
        box.update({ax: (roi[i], roi[k + i]) for i, ax in enumerate(axes)})
    antialias = bool(a.get("antialias", 0))
    ctm = a.get("coordinate_transformation_mode", "half_pixel")
    for ax in axes:
        if out[ax] == shape[ax] and full_scale[ax] == 1.0 and (
                ctm != "tf_crop_and_resize" or box[ax] == (0.0, 1.0)):
            continue  # identity along this axis
        if out[ax] < 1:
            raise Unsupported("Resize to an empty tensor")
        m, outside = _resize_matrix(static(ax), out[ax], full_scale[ax], mode, a, box[ax],
                                    antialias, 11 if not old else 10)
        x = _resize_axis(cx, x, ax, m, outside, mode, a.get("extrapolation_value", 0.0))
    return x


# ---------------------------------------------------------------- scatter, gather-nd, top-k
#
# Data-dependent writes (scatter) and sorts (top-k) are composed from masks: an update
# lands at a position when its target index equals that position, so every scatter is a
# reduction over the updates of where(hit, update, identity). That costs O(updates x
# positions), fine for the index tensors these ops see (cache updates, small top-k), and
# it reproduces the reference's order exactly: with duplicates, the last update wins.

def _iota(cx, n, rank, ax, dt=dtypes.i64):
    """0..n-1 laid along axis ``ax`` of a rank-``rank`` tensor of ones elsewhere."""
    shape = [1] * rank
    shape[ax] = n
    return cx.const_array(np.arange(n, dtype=dt.np).reshape(shape), dt)


def _wrap_index(cx, idx, n):
    """Negative indices count from the end (n may differ per last-axis component)."""
    idx = cx.cast(idx, dtypes.i64)
    n = n if isinstance(n, Value) else cx.const(int(n), dtypes.i64)
    return _where(cx, cx.op("lt", [idx, cx.const(0, dtypes.i64)]), cx.op("add", [idx, n]), idx)


def _lowest(x):
    return -math.inf if x.dtype.is_float else int(np.iinfo(x.dtype.np).min)


def _highest(x):
    return math.inf if x.dtype.is_float else int(np.iinfo(x.dtype.np).max)


def _scatter_flat(cx, data, pos, upd, reduction):
    """data [P, R] with rows ``pos`` [M] (in range) updated from ``upd`` [M, R]."""
    P, M = data.shape[0], pos.shape[0]
    if not all(isinstance(d, int) for d in (P, M)):
        raise Unsupported("scatter over dynamic sizes")
    hit = cx.op("eq", [_reshape(cx, pos, (M, 1)), _iota(cx, P, 2, 1)])            # [M, P]
    # the last update aimed at each row (-1: none)
    last = cx.op("max", [_where(cx, hit, _iota(cx, M, 2, 0), cx.const(-1, dtypes.i64))],
                 {"axes": (0,), "keepdims": False})                                # [P]
    touched = _reshape(cx, cx.op("ge", [last, cx.const(0, dtypes.i64)]), (P, 1))
    if reduction == "none":
        src = cx.op("index_select", [upd, cx.op("maximum", [last, cx.const(0, dtypes.i64)])], {"axis": 0})
        return _where(cx, touched, src, data)
    ident = {"add": 0, "mul": 1, "max": _lowest(data), "min": _highest(data)}.get(reduction)
    if ident is None:
        raise Unsupported(f"scatter reduction {reduction!r}")
    hit3 = _reshape(cx, hit, (M, P, 1))
    u3 = _reshape(cx, upd, (M, 1, upd.shape[1]))
    kind = {"add": "sum", "mul": "prod", "max": "max", "min": "min"}[reduction]
    acc = cx.op(kind, [_where(cx, hit3, u3, _c(cx, ident, upd))], {"axes": (0,), "keepdims": False})
    combine = {"add": "add", "mul": "mul", "max": "maximum", "min": "minimum"}[reduction]
    return _where(cx, touched, cx.op(combine, [data, acc]), data)


def _flat_positions(cx, idx, dims):
    """Row-major flat offsets of the index vectors in ``idx``'s last axis within ``dims``."""
    k = len(dims)
    strides = [int(np.prod(dims[d + 1:], dtype=np.int64)) for d in range(k)]
    sizes = cx.const_array(np.array(dims, np.int64), dtypes.i64)
    idx = _wrap_index(cx, idx, sizes)
    return cx.op("sum", [cx.op("mul", [idx, cx.const_array(np.array(strides, np.int64), dtypes.i64)])],
                 {"axes": (-1,), "keepdims": False})


@conv("ScatterND")
def _scatter_nd(cx, ins, a):
    data, idx, upd = ins[0], ins[1], ins[2]
    if not (data.type.is_static and idx.type.is_static):
        raise Unsupported("ScatterND over dynamic shapes")
    k = idx.shape[-1]
    lead, rest = [int(d) for d in data.shape[:k]], [int(d) for d in data.shape[k:]]
    m = int(np.prod(idx.shape[:-1], dtype=np.int64))
    pos = _reshape(cx, _flat_positions(cx, idx, lead), (m,))
    r = int(np.prod(rest, dtype=np.int64))
    out = _scatter_flat(cx, _reshape(cx, data, (int(np.prod(lead, dtype=np.int64)), r)), pos,
                        _reshape(cx, upd, (m, r)), a.get("reduction", "none"))
    return _reshape(cx, out, data.shape)


@conv("ScatterElements", "Scatter")
def _scatter_elements(cx, ins, a):
    data, idx, upd = ins[0], ins[1], ins[2]
    if not (data.type.is_static and idx.type.is_static):
        raise Unsupported(f"{cx.node.op_type} over dynamic shapes")
    r = _rank(data)
    ax = _axis(a.get("axis", 0), r)
    # each update's full target coordinate: its own position, with the index along ``axis``
    coords = [_wrap_index(cx, idx, data.shape[ax]) if k == ax else
              cx.op("expand", [_iota(cx, idx.shape[k], r, k)], {"shape": tuple(idx.shape)})
              for k in range(r)]
    coords = [_unsqueeze(cx, c, [r]) for c in coords]
    stacked = coords[0] if r == 1 else cx.op("concat", coords, {"axis": r})
    m = int(np.prod(idx.shape, dtype=np.int64))
    pos = _reshape(cx, _flat_positions(cx, stacked, [int(d) for d in data.shape]), (m,))
    n = int(np.prod(data.shape, dtype=np.int64))
    out = _scatter_flat(cx, _reshape(cx, data, (n, 1)), pos, _reshape(cx, upd, (m, 1)),
                        a.get("reduction", "none"))
    return _reshape(cx, out, data.shape)


@conv("TensorScatter")
def _tensor_scatter(cx, ins, a):
    past, upd = ins[0], ins[1]
    if not (past.type.is_static and upd.type.is_static):
        raise Unsupported("TensorScatter over dynamic shapes")
    r = _rank(past)
    ax = _axis(a.get("axis", -2), r)
    if ax == 0:
        raise ShapeError("TensorScatter: axis 0 is the batch axis")
    L, S = int(past.shape[ax]), int(upd.shape[ax])
    start = cx.cast(ins[2], dtypes.i64) if cx.has(2) else cx.const_array(
        np.zeros(past.shape[0], np.int64), dtypes.i64)
    # cache position of each update row: write_indices[batch] + sequence index
    shape = [1] * r
    shape[0] = past.shape[0]
    tgt = cx.op("add", [_reshape(cx, start, shape), _iota(cx, S, r, ax)])
    if a.get("mode", "linear") == "circular":
        tgt = cx.op("mod", [tgt, cx.const(L, dtypes.i64)])
    full = list(upd.shape)
    tgt = cx.op("expand", [tgt], {"shape": tuple(full)})
    return _scatter_elements(cx, [past, tgt, upd], {"axis": ax})


@conv("GatherND")
def _gather_nd(cx, ins, a):
    data, idx = ins[0], ins[1]
    if not (data.type.is_static and idx.type.is_static):
        raise Unsupported("GatherND over dynamic shapes")
    b = a.get("batch_dims", 0)
    k = idx.shape[-1]
    dims = [int(d) for d in data.shape]
    batch, looked, rest = dims[:b], dims[b:b + k], dims[b + k:]
    nb, nl = int(np.prod(batch, dtype=np.int64)), int(np.prod(looked, dtype=np.int64))
    pos = _flat_positions(cx, idx, looked)                       # idx.shape[:-1]
    if b:  # each batch entry indexes its own block of rows
        off = _reshape(cx, cx.const_array(np.arange(nb, dtype=np.int64) * nl, dtypes.i64),
                       batch + [1] * (_rank(pos) - b))
        pos = cx.op("add", [pos, off])
    flat = _reshape(cx, data, (nb * nl,) + tuple(rest))
    m = int(np.prod(pos.shape, dtype=np.int64))
    y = cx.op("index_select", [flat, _reshape(cx, pos, (m,))], {"axis": 0})
    return _reshape(cx, y, tuple(idx.shape[:-1]) + tuple(rest))


@conv("TopK")
def _topk(cx, ins, a):
    x = ins[0]
    r = _rank(x)
    ax = _axis(a.get("axis", -1), r)
    k = int(cx.scalar(1)) if cx.opset >= 10 else int(a["k"])
    n = x.shape[ax]
    if not isinstance(n, int):
        raise Unsupported("TopK along a dynamic axis")
    if not 0 < k <= n:
        raise ShapeError(f"TopK: k={k} out of range for an axis of {n}")
    perm = [d for d in range(r) if d != ax] + [ax]
    xt = _permute(cx, x, perm)                                   # [..., n]
    xi, xj = _unsqueeze(cx, xt, [r]), _unsqueeze(cx, xt, [r - 1])  # [..., n, 1], [..., 1, n]
    # rank of element i = how many come before it: better values, then equal ones at a
    # lower index (the order ONNX prescribes, sorted or not)
    better = cx.op("gt" if a.get("largest", 1) else "lt", [xj, xi])
    earlier = cx.op("logical_and", [cx.op("eq", [xj, xi]),
                                    cx.op("lt", [_iota(cx, n, 2, 1), _iota(cx, n, 2, 0)])])
    rank = cx.op("sum", [cx.cast(cx.op("logical_or", [better, earlier]), dtypes.i64)],
                 {"axes": (r,), "keepdims": True})                   # [..., n, 1]
    pick = cx.op("eq", [rank, _iota(cx, k, 2, 1)])                   # [..., n, k]
    vals = cx.op("sum", [_where(cx, pick, xi, _c(cx, 0, x))], {"axes": (r - 1,), "keepdims": False})
    idxs = cx.op("sum", [_where(cx, pick, _iota(cx, n, 2, 0), cx.const(0, dtypes.i64))],
                 {"axes": (r - 1,), "keepdims": False})
    inv = [perm.index(d) for d in range(r)]
    return [_permute(cx, vals, inv), _permute(cx, idxs, inv)]


@conv("CumProd")
def _cumprod(cx, ins, a):
    x = ins[0]
    r = _rank(x)
    ax = _axis(int(cx.scalar(1)), r)
    n = x.shape[ax]
    if not isinstance(n, int):
        raise Unsupported("CumProd along a dynamic dim")
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")   # output i takes inputs j
    rev, exc = a.get("reverse", 0), a.get("exclusive", 0)
    m = ((j > i) if exc else (j >= i)) if rev else ((j < i) if exc else (j <= i))
    perm = [d for d in range(r) if d != ax] + [ax]
    xt = _unsqueeze(cx, _permute(cx, x, perm), [r - 1])             # [..., 1, n]
    y = cx.op("prod", [_where(cx, cx.const_array(m), xt, _c(cx, 1, x))], {"axes": (r,), "keepdims": False})
    return _permute(cx, y, [perm.index(d) for d in range(r)])


@conv("SwiGLU")
def _swiglu(cx, ins, a):
    g, v = ins[0], ins[1]
    if tuple(g.shape) != tuple(v.shape):
        raise ShapeError(f"SwiGLU: gate {list(g.shape)} and value {list(v.shape)} differ in shape")
    return cx.op("mul", [_swish(cx, [g], {"alpha": a.get("alpha", 1.0)}), v])


# ---------------------------------------------------------------- einsum, det, sequences, pooling extras

def _einsum_terms(eq, ranks):
    """Operand and output labels of an einsum equation; the dims an ellipsis stands for get
    labels chr(0x100 + k), k counted from the right, so that they broadcast like numpy."""
    eq = eq.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ShapeError(f"Einsum equation {eq!r} names {len(terms)} operands, got {len(ranks)}")
    ell = lambda e: [chr(0x100 + k) for k in reversed(range(e))]  # noqa: E731
    out_terms, n_ell = [], 0
    for t, r in zip(terms, ranks):
        e = r - (len(t) - 3) if "..." in t else 0
        labels = list(t.replace("...", "\0"))
        labels = [x for lab in labels for x in (ell(e) if lab == "\0" else [lab])]
        if len(labels) != r or not all(x.isalpha() or ord(x) >= 0x100 for x in labels):
            raise ShapeError(f"Einsum term {t!r} does not fit an operand of rank {r}")
        out_terms.append(labels)
        n_ell = max(n_ell, e)
    if arrow:
        out = [x for lab in rhs.replace("...", "\0") for x in (ell(n_ell) if lab == "\0" else [lab])]
    else:  # implicit output: the ellipsis dims, then the labels used once, sorted
        counts: dict = {}
        for labels in out_terms:
            for x in labels:
                counts[x] = counts.get(x, 0) + 1
        out = ell(n_ell) + sorted(x for x, c in counts.items() if c == 1 and x.isalpha())
    return out_terms, out


def _einsum_diagonal(cx, x, labels):
    """Fold repeated labels of one operand (x[i, i] -> its diagonal) with an identity mask."""
    while len(set(labels)) < len(labels):
        lab = next(x_ for x_ in labels if labels.count(x_) > 1)
        p = labels.index(lab)
        q = labels.index(lab, p + 1)
        n = x.shape[p]
        shape = [1] * _rank(x)
        shape[p], shape[q] = n, n
        eye = cx.const_array(np.eye(n, dtype=x.dtype.np).reshape(shape), x.dtype)
        x = cx.op("sum", [_where(cx, cx.op("ne", [eye, _c(cx, 0, eye)]), x, _c(cx, 0, x))],
                  {"axes": (q,), "keepdims": False})
        labels = labels[:q] + labels[q + 1:]
    return x, labels


@conv("Einsum")
def _einsum(cx, ins, a):
    ops = [v for v in ins if v is not None]
    terms, out = _einsum_terms(a["equation"], [_rank(v) for v in ops])
    summed = [lab for t in terms for lab in t if lab not in out]
    order = list(out) + list(dict.fromkeys(summed))
    # every operand laid out over all labels (1 where it lacks one), multiplied, and the
    # labels not in the output summed away
    prod_ = None
    for v, labels in zip(ops, terms):
        v, labels = _einsum_diagonal(cx, v, labels)
        mine = [lab for lab in order if lab in labels]
        v = _permute(cx, v, [labels.index(lab) for lab in mine])
        v = _reshape(cx, v, [v.shape[mine.index(lab)] if lab in mine else 1 for lab in order])
        prod_ = v if prod_ is None else cx.op("mul", [prod_, v])
    if len(order) > len(out):
        prod_ = cx.op("sum", [prod_], {"axes": tuple(range(len(out), len(order))), "keepdims": False})
    return prod_


def _elem(cx, m, i, j):
    """m[..., i, j] as a tensor of m's batch shape."""
    r = _rank(m)
    e = cx.op("slice", [cx.op("slice", [m], {"axis": r - 2, "start": i, "end": i + 1})],
              {"axis": r - 1, "start": j, "end": j + 1})
    return _reshape(cx, e, m.shape[:-2])


def _det_of(cx, m, n):
    if n == 1:
        return _elem(cx, m, 0, 0)
    if n == 2:
        return cx.op("sub", [cx.op("mul", [_elem(cx, m, 0, 0), _elem(cx, m, 1, 1)]),
                             cx.op("mul", [_elem(cx, m, 0, 1), _elem(cx, m, 1, 0)])])
    r = _rank(m)
    rows = cx.op("slice", [m], {"axis": r - 2, "start": 1, "end": n})
    acc = None
    for j in range(n):  # Laplace expansion along the first row
        cols = cx.const_array(np.array([c for c in range(n) if c != j], np.int64), dtypes.i64)
        term = cx.op("mul", [_elem(cx, m, 0, j),
                             _det_of(cx, cx.op("index_select", [rows, cols], {"axis": r - 1}), n - 1)])
        acc = term if acc is None else cx.op("add" if j % 2 == 0 else "sub", [acc, term])
    return acc


@conv("Det")
def _det(cx, ins, a):
    m = _float(ins[0], "Det")
    n = m.shape[-1]
    if _rank(m) < 2 or m.shape[-2] != n:
        raise ShapeError(f"Det needs square matrices, got shape {list(m.shape)}")
    if not isinstance(n, int) or n > 4:
        # cofactor expansion grows as n!; larger matrices would need an LU kernel
        raise Unsupported(f"Det of {n}x{n} matrices (up to 4x4)")
    return _det_of(cx, m, n)


@conv("ReverseSequence")
def _reverse_sequence(cx, ins, a):
    x, lens = ins[0], ins[1]
    r = _rank(x)
    bax, tax = _axis(a.get("batch_axis", 1), r), _axis(a.get("time_axis", 0), r)
    if r < 2 or bax == tax:
        raise ShapeError("ReverseSequence needs distinct batch and time axes")
    T = x.shape[tax]
    if not isinstance(T, int):
        raise Unsupported("ReverseSequence along a dynamic time axis")
    shape = [1] * r
    shape[bax] = x.shape[bax]
    n = _reshape(cx, cx.cast(lens, dtypes.i64), shape)
    t = _iota(cx, T, r, tax)
    # position t of sequence b reads n[b] - 1 - t inside its length, itself beyond it
    src = _where(cx, cx.op("lt", [t, n]), cx.op("sub", [cx.op("sub", [n, cx.const(1, dtypes.i64)]), t]), t)
    return cx.op("gather", [x, cx.op("expand", [src], {"shape": tuple(x.shape)})], {"axis": tax})


@conv("LRN")
def _lrn(cx, ins, a):
    x = _float(ins[0], "LRN")
    size = a["size"]
    alpha, beta, bias = a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0)
    C = x.shape[1]
    lo = (size - 1) // 2
    pads = [0] * (2 * _rank(x))
    pads[2], pads[3] = lo, size - 1 - lo
    sq = cx.op("pad", [cx.op("mul", [x, x])], {"pads": tuple(pads)})
    # the sum of squares over the channel window [c - lo, c + size - 1 - lo]
    s = None
    for k in range(size):
        part = cx.op("slice", [sq], {"axis": 1, "start": k, "end": k + C})
        s = part if s is None else cx.op("add", [s, part])
    den = cx.op("add", [_c(cx, bias, x), cx.op("mul", [s, _c(cx, alpha / size, x)])])
    return cx.op("div", [x, cx.op("pow", [den, _c(cx, beta, x)])])


def _lp_pool_2d(cx, ins, a):
    x = _float(ins[0], "LpPool")
    nd = _rank(x) - 2
    if a.get("ceil_mode", 0):
        raise Unsupported("LpPool with ceil_mode")
    kernel = list(a["kernel_shape"])
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    pb, pe = _spatial_pads(cx, a, x.shape[2:], kernel, strides, dil)
    p = a.get("p", 2)
    xp = cx.op("mul", [x, x]) if p == 2 else cx.op("pow", [cx.op("abs", [x]), _c(cx, float(p), x)])
    x2 = _to_2d(cx, xp, nd)
    if nd == 1:
        kernel, strides, dil, pb, pe = [1] + kernel, [1] + strides, [1] + dil, [0] + pb, [0] + pe
    if pb != pe:
        x2 = cx.op("pad", [x2], {"pads": (0, 0, 0, 0, pb[0], pe[0], pb[1], pe[1])})
        pb = [0, 0]
    # the window sums of |x|^p: a depthwise convolution with a kernel of ones (it has
    # strides, padding and dilations, which the pooling ops lack in part)
    C = x.shape[1]
    ones = cx.const_array(np.ones((C, 1) + tuple(kernel), x.dtype.np), x.dtype)
    s = cx.op("conv2d", [x2, ones], {"stride": tuple(strides), "padding": tuple(pb),
                                     "dilation": tuple(dil), "groups": C})
    y = cx.op("sqrt", [s]) if p == 2 else cx.op("pow", [s, _c(cx, 1.0 / p, s)])
    return _from_2d(cx, y, nd)


@conv("MaxUnpool")
def _max_unpool(cx, ins, a):
    x, idx = ins[0], ins[1]
    if not x.type.is_static:
        raise Unsupported("MaxUnpool of a dynamic shape")
    nd = _rank(x) - 2
    kernel = list(a["kernel_shape"])
    strides = list(a.get("strides", [1] * nd))
    pads = list(a.get("pads", [0] * (2 * nd)))
    shape = list(x.shape[:2]) + [(x.shape[2 + k] - 1) * strides[k] - pads[k] - pads[nd + k] + kernel[k]
                                 for k in range(nd)]
    total = int(np.prod(shape, dtype=np.int64))
    m = int(np.prod(x.shape, dtype=np.int64))
    # the indices are flat positions in the unpooled shape (as MaxPool's Indices output gives
    # them); an explicit output_shape only pads that result at the end of each dim
    zeros = cx.op("full", [], {"shape": (total, 1), "value": 0.0, "dtype": x.dtype})
    y = _reshape(cx, _scatter_flat(cx, zeros, _reshape(cx, cx.cast(idx, dtypes.i64), (m,)),
                                   _reshape(cx, x, (m, 1)), "none"), shape)
    if cx.has(2):
        out = cx.ints(2, "output_shape")
        if len(out) != len(shape) or any(o < s for o, s in zip(out, shape)):
            raise ShapeError(f"MaxUnpool: output_shape {out} is smaller than the unpooled {shape}")
        if list(out) != shape:
            y = cx.op("pad", [y], {"pads": tuple(v for o, s in zip(out, shape) for v in (0, o - s))})
    return y


def _max_pool_indices(cx, x, a):
    """MaxPool's values and Indices: every window tap gathered as a strided slice of the
    padded input, the first maximum among the taps, and its flat position in ``x``."""
    nd = _rank(x) - 2
    if nd != 2 or not x.type.is_static:
        raise Unsupported("MaxPool's Indices output (only 2-D, static shapes)")
    if a.get("ceil_mode", 0):
        raise Unsupported("MaxPool's Indices output with ceil_mode")
    N, C, H, W = (int(d) for d in x.shape)
    kernel = list(a["kernel_shape"])
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    pb, pe = _spatial_pads(cx, a, x.shape[2:], kernel, strides, dil)
    xf = x if x.dtype.is_float else cx.cast(x, dtypes.f32)
    xp = cx.op("pad", [xf], {"pads": (0, 0, 0, 0, pb[0], pe[0], pb[1], pe[1]), "value": -math.inf})
    OH = (H + pb[0] + pe[0] - (kernel[0] - 1) * dil[0] - 1) // strides[0] + 1
    OW = (W + pb[1] + pe[1] - (kernel[1] - 1) * dil[1] - 1) // strides[1] + 1
    taps, pos = [], []
    oh, ow = np.meshgrid(np.arange(OH), np.arange(OW), indexing="ij")
    col_major = a.get("storage_order", 0) == 1
    for r in range(kernel[0]):
        for s in range(kernel[1]):
            h0, w0 = r * dil[0], s * dil[1]
            t = cx.op("slice", [xp], {"axis": 2, "start": h0, "end": h0 + (OH - 1) * strides[0] + 1,
                                      "step": strides[0]})
            t = cx.op("slice", [t], {"axis": 3, "start": w0, "end": w0 + (OW - 1) * strides[1] + 1,
                                     "step": strides[1]})
            taps.append(_unsqueeze(cx, t, [4]))
            h, w = oh * strides[0] + h0 - pb[0], ow * strides[1] + w0 - pb[1]
            pos.append(w * H + h if col_major else h * W + w)
    stacked = taps[0] if len(taps) == 1 else cx.op("concat", taps, {"axis": 4})   # [N, C, OH, OW, T]
    vals = cx.op("max", [stacked], {"axes": (4,), "keepdims": False})
    best = cx.op("argmax", [stacked], {"axis": 4, "keepdims": True})
    table = cx.const_array(np.stack(pos, axis=-1).reshape(1, 1, OH, OW, len(pos)).astype(np.int64), dtypes.i64)
    where = cx.op("gather", [cx.op("expand", [table], {"shape": (N, C, OH, OW, len(pos))}), best], {"axis": 4})
    plane = cx.const_array((np.arange(N * C, dtype=np.int64) * H * W).reshape(N, C, 1, 1), dtypes.i64)
    idx = cx.op("add", [_reshape(cx, where, (N, C, OH, OW)), plane])
    return [cx.cast(vals, x.dtype), idx]


def _max_pool(cx, ins, a):
    if len([o for o in cx.node.output if o]) > 1:
        return _max_pool_indices(cx, ins[0], a)
    return _pool("max")(cx, ins, a)



# ---------------------------------------------------------------- bit manipulation

def _bitwise_conv(op):
    def f(cx, ins, a):
        xs = [v for v in ins if v is not None]
        if xs[0].dtype is dtypes.bool_:
            raise Unsupported(f"{cx.node.op_type} on bool inputs")
        if op == "shift":
            d = a.get("direction", "")
            if d not in ("LEFT", "RIGHT"):
                raise ShapeError(f"BitShift direction must be LEFT or RIGHT, got {d!r}")
            return cx.op("bitwise", xs, {"op": "shl" if d == "LEFT" else "shr"})
        return cx.op("bitwise", xs, {"op": op})
    return f


for _t, _k in {"BitwiseAnd": "and", "BitwiseOr": "or", "BitwiseXor": "xor", "BitwiseNot": "not",
               "BitShift": "shift"}.items():
    CONVERTERS[_t] = _bitwise_conv(_k)


# ---------------------------------------------------------------- signal processing
#
# Window functions and mel filters depend only on sizes, so they are constants. A DFT along
# one axis is linear in the (real, imaginary) input: two matmuls with cos / sin matrices
# built at compile time (O(n^2), exact to rounding, and the GEMM kernel does the work).

def _window(a0, a1, a2=0.0):
    def f(cx, ins, a):
        n = int(cx.scalar(0))
        if n < 1:
            raise Unsupported(f"{cx.node.op_type} of size {n} (an empty tensor)")
        d = n if a.get("periodic", 1) else n - 1
        k = np.arange(n, dtype=np.float64)
        w = a0 - a1 * np.cos(2 * np.pi * k / d) + a2 * np.cos(4 * np.pi * k / d) if d else np.ones(1)
        dt = onnx_dtype(a.get("output_datatype", 1))
        return cx.const_array(w.astype(dt.np), dt)
    return f


CONVERTERS["HannWindow"] = _window(0.5, 0.5)
CONVERTERS["HammingWindow"] = _window(25 / 46, 21 / 46)
CONVERTERS["BlackmanWindow"] = _window(0.42, 0.5, 0.08)


def _dft_last(cx, re, im, length, onesided, inverse):
    """DFT of length ``length`` along the last axis of re (+ i im; im may be None): the
    input is cut or zero-padded to that length. Returns (real, imag or None) outputs."""
    n_in = int(re.shape[-1])
    if inverse and onesided:
        # the inverse of a one-sided spectrum is real: bins 0 < k < length/2 count twice
        # (their mirrored conjugates), the rest once
        n_use = min(n_in, length // 2 + 1)
        k = np.arange(n_in)[:, None]
        t = 2 * np.pi * k * np.arange(length)[None, :] / length
        c = np.where((k == 0) | (2 * k == length), 1.0, 2.0) * (k < n_use) / length
        out = cx.op("matmul", [re, cx.const_array((c * np.cos(t)).astype(re.dtype.np), re.dtype)])
        if im is not None:
            out = cx.op("sub", [out, cx.op("matmul", [im, cx.const_array((c * np.sin(t)).astype(re.dtype.np),
                                                                         re.dtype)])])
        return out, None
    bins = length // 2 + 1 if onesided else length
    k = np.arange(n_in)[:, None]
    t = 2 * np.pi * k * np.arange(bins)[None, :] / length
    scale = (k < length) / (length if inverse else 1.0)  # rows past the length are cut off
    sign = 1.0 if inverse else -1.0                       # e^{+-i t}
    C = cx.const_array((scale * np.cos(t)).astype(re.dtype.np), re.dtype)
    S = cx.const_array((sign * scale * np.sin(t)).astype(re.dtype.np), re.dtype)
    out_re, out_im = cx.op("matmul", [re, C]), cx.op("matmul", [re, S])
    if im is not None:
        out_re = cx.op("sub", [out_re, cx.op("matmul", [im, S])])
        out_im = cx.op("add", [out_im, cx.op("matmul", [im, C])])
    return out_re, out_im


def _complex_parts(cx, x):
    """[..., 1] real or [..., 2] (real, imag) -> the parts without that last axis."""
    c = x.shape[-1]
    if c not in (1, 2):
        raise ShapeError(f"{cx.node.op_type}: the last dim must be 1 (real) or 2 (complex), got {c}")
    if c == 1:
        return _reshape(cx, x, x.shape[:-1]), None
    r = _rank(x)
    re, im = (cx.op("slice", [x], {"axis": r - 1, "start": k, "end": k + 1}) for k in (0, 1))
    return _reshape(cx, re, x.shape[:-1]), _reshape(cx, im, x.shape[:-1])


def _stack_complex(cx, re, im):
    parts = [_unsqueeze(cx, re, [_rank(re)])]
    if im is not None:
        parts.append(_unsqueeze(cx, im, [_rank(im)]))
    return parts[0] if len(parts) == 1 else cx.op("concat", parts, {"axis": _rank(re)})


@conv("DFT")
def _dft(cx, ins, a):
    x = _float(ins[0], "DFT")
    if not x.type.is_static:
        raise Unsupported("DFT of a dynamic shape")
    r = _rank(x)
    if cx.opset >= 20:
        ax = int(cx.scalar(2, -2))
    else:
        ax = a.get("axis", 1)
    ax = _axis(ax, r)
    if ax == r - 1:
        raise ShapeError("DFT: the axis cannot be the last (real/imaginary) dim")
    inverse, onesided = bool(a.get("inverse", 0)), bool(a.get("onesided", 0))
    n = int(x.shape[ax])
    default = 2 * (n - 1) if inverse and onesided else n
    length = int(cx.scalar(1, default)) if cx.has(1) else default
    re, im = _complex_parts(cx, x)
    perm = [d for d in range(r - 1) if d != ax] + [ax]
    inv = [perm.index(d) for d in range(r - 1)]
    yr, yi = _dft_last(cx, _permute(cx, re, perm), None if im is None else _permute(cx, im, perm),
                       length, onesided, inverse)
    return _stack_complex(cx, _permute(cx, yr, inv), None if yi is None else _permute(cx, yi, inv))


@conv("STFT")
def _stft(cx, ins, a):
    x = _float(ins[0], "STFT")
    if not x.type.is_static:
        raise Unsupported("STFT of a dynamic shape")
    step = int(cx.scalar(1))
    window = ins[2] if cx.has(2) else None
    fl = int(cx.scalar(3)) if cx.has(3) else (int(window.shape[0]) if window is not None else None)
    if fl is None:
        raise ShapeError("STFT needs a window or a frame_length")
    b, n = int(x.shape[0]), int(x.shape[1])
    frames = 1 + (n - fl) // step
    if frames < 1 or step < 1:
        raise ShapeError(f"STFT: frame_length {fl} and step {step} fit no frame in a signal of {n}")
    idx = (np.arange(frames)[:, None] * step + np.arange(fl)[None, :]).reshape(-1)
    fr = cx.op("index_select", [x, cx.const_array(idx.astype(np.int64), dtypes.i64)], {"axis": 1})
    fr = _reshape(cx, fr, (b, frames, fl, x.shape[2]))
    re, im = _complex_parts(cx, fr)                                        # [b, frames, fl]
    if window is not None:
        re = cx.op("mul", [re, window])
        im = None if im is None else cx.op("mul", [im, window])
    yr, yi = _dft_last(cx, re, im, fl, bool(a.get("onesided", 1)), False)
    return _stack_complex(cx, yr, yi)


@conv("AffineGrid")
def _affine_grid(cx, ins, a):
    theta = _float(ins[0], "AffineGrid")
    size = cx.ints(1, "size")
    spatial = [int(s) for s in size[2:]]
    nd = len(spatial)
    if nd not in (2, 3) or tuple(theta.shape[1:]) != (nd, nd + 1):
        raise ShapeError(f"AffineGrid: theta {list(theta.shape)} does not fit size {size}")
    # the base grid: normalized coordinates of every output point, (x, y[, z], 1) with x
    # running along the last dim
    axes = []
    for d in spatial:
        if a.get("align_corners", 0):
            axes.append(np.linspace(-1.0, 1.0, d) if d > 1 else np.zeros(1))
        else:
            axes.append((2 * np.arange(d) + 1) / d - 1)
    mesh = np.meshgrid(*axes, indexing="ij")
    base = np.stack([m.reshape(-1) for m in reversed(mesh)] + [np.ones(mesh[0].size)], axis=1)
    N = theta.shape[0]
    pts = cx.const_array(base.reshape(1, -1, nd + 1).astype(theta.dtype.np), theta.dtype)
    grid = cx.op("matmul", [pts, _permute(cx, theta, (0, 2, 1))])   # [N, points, nd]
    return _reshape(cx, grid, (N, *spatial, nd))


# ---------------------------------------------------------------- GridSample

def _reflect_into(cx, x, lo, hi):
    """Fold coordinates outside [lo, hi] back in by reflecting at the borders, as often as
    needed (GridSample's reflection padding)."""
    k = lambda v: _c(cx, v, x)  # noqa: E731
    rng = hi - lo
    below, above = cx.op("lt", [x, k(lo)]), cx.op("gt", [x, k(hi)])
    dx = _where(cx, below, cx.op("sub", [k(lo), x]), cx.op("sub", [x, k(hi)]))
    n = cx.op("floor", [cx.op("div", [dx, k(rng)])])
    r = cx.op("sub", [dx, cx.op("mul", [n, k(rng)])])
    even = cx.op("eq", [cx.op("mod", [n, k(2.0)]), k(0.0)])
    lo_r, hi_r = cx.op("add", [k(lo), r]), cx.op("sub", [k(hi), r])
    folded = _where(cx, below, _where(cx, even, lo_r, hi_r), _where(cx, even, hi_r, lo_r))
    return _where(cx, cx.op("logical_or", [below, above]), folded, x)


def _keys_cubic(cx, t, A=-0.75):
    """Weights of taps -1, 0, 1, 2 around a point t in [0, 1) past tap 0 (Keys' cubic)."""
    k = lambda v: _c(cx, v, t)  # noqa: E731
    mul, add, sub = (lambda p, q: cx.op("mul", [p, q])), (lambda p, q: cx.op("add", [p, q])), \
        (lambda p, q: cx.op("sub", [p, q]))

    def far(d):   # 1 <= d < 2
        return sub(mul(add(mul(sub(mul(k(A), d), k(5 * A)), d), k(8 * A)), d), k(4 * A))

    def near(d):  # d < 1
        return add(mul(mul(sub(mul(k(A + 2), d), k(A + 3)), d), d), k(1.0))
    one_t = sub(k(1.0), t)
    return [far(add(t, k(1.0))), near(t), near(one_t), far(add(one_t, k(1.0)))]


@conv("GridSample")
def _grid_sample(cx, ins, a):
    X, grid = _float(ins[0], "GridSample"), _float(ins[1], "GridSample")
    if not (X.type.is_static and grid.type.is_static):
        raise Unsupported("GridSample over dynamic shapes")
    nd = _rank(X) - 2
    if _rank(grid) != nd + 2 or grid.shape[-1] != nd or grid.shape[0] != X.shape[0]:
        raise ShapeError(f"GridSample: grid {list(grid.shape)} does not fit input {list(X.shape)}")
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(a.get("mode", "linear"), a.get("mode", "linear"))
    pad = a.get("padding_mode", "zeros")
    if mode not in ("nearest", "linear", "cubic") or pad not in ("zeros", "border", "reflection"):
        raise Unsupported(f"GridSample mode {mode!r} with padding_mode {pad!r}")
    align = bool(a.get("align_corners", 0))
    N, C = int(X.shape[0]), int(X.shape[1])
    dims = [int(d) for d in X.shape[2:]]
    out_sp = tuple(int(d) for d in grid.shape[1:-1])
    g = cx.cast(grid, X.dtype)
    k = lambda v: _c(cx, v, g)  # noqa: E731
    per_dim = []  # per spatial dim: [(index as float, weight or None)] over its taps
    for i, d in enumerate(dims):
        # the grid's last axis holds (x, y[, z]): x indexes the last spatial dim
        gi = _reshape(cx, cx.op("slice", [g], {"axis": nd + 1, "start": nd - 1 - i, "end": nd - i}),
                      (N,) + out_sp)
        if align:
            x = cx.op("mul", [cx.op("add", [gi, k(1.0)]), k((d - 1) / 2)])
        else:
            x = cx.op("div", [cx.op("sub", [cx.op("mul", [cx.op("add", [gi, k(1.0)]), k(float(d))]),
                                            k(1.0)]), k(2.0)])
        if mode == "nearest":
            x = _round(cx, [x], {})
        lo, hi = (0.0, d - 1.0) if align else (-0.5, d - 0.5)
        outside = cx.op("logical_or", [cx.op("lt", [x, k(lo)]), cx.op("gt", [x, k(hi)])])
        if pad == "border":
            x = _where(cx, outside, cx.op("clamp", [x], {"min": 0.0, "max": d - 1.0}), x)
        elif pad == "reflection":
            x = _reflect_into(cx, x, lo, hi)
        if mode == "nearest":
            taps = [(x, None)]
        else:
            x0 = cx.op("floor", [x])
            t = cx.op("sub", [x, x0])
            if mode == "linear":
                taps = [(x0, cx.op("sub", [k(1.0), t])), (cx.op("add", [x0, k(1.0)]), t)]
            else:
                taps = [(cx.op("add", [x0, k(float(o))]), w) for o, w in zip((-1, 0, 1, 2), _keys_cubic(cx, t))]
        fixed = []
        for idx, w in taps:  # where each tap reads, by the padding mode
            if pad == "zeros":
                ok = cx.op("logical_and", [cx.op("ge", [idx, k(0.0)]), cx.op("le", [idx, k(d - 1.0)])])
                w = _where(cx, ok, w if w is not None else k(1.0), k(0.0))
            elif pad == "reflection":
                idx = _reflect_into(cx, idx, lo, hi)
            idx = cx.cast(cx.op("clamp", [idx], {"min": 0.0, "max": d - 1.0}), dtypes.i64)
            fixed.append((idx, w))
        per_dim.append(fixed)
    # every combination of taps: gather rows of X laid out as [N * spatial, C]
    m = N * int(np.prod(out_sp, dtype=np.int64))
    xf = _reshape(cx, _permute(cx, X, [0] + list(range(2, nd + 2)) + [1]), (N * int(np.prod(dims)), C))
    strides = [int(np.prod(dims[i + 1:], dtype=np.int64)) for i in range(nd)]
    base = _reshape(cx, cx.const_array(np.arange(N, dtype=np.int64) * int(np.prod(dims)), dtypes.i64),
                    (N,) + (1,) * len(out_sp))
    acc = None
    for combo in np.ndindex(*[len(t) for t in per_dim]):
        flat, w = base, None
        for i, j in enumerate(combo):
            idx, wi = per_dim[i][j]
            flat = cx.op("add", [flat, cx.op("mul", [idx, cx.const(strides[i], dtypes.i64)]) if strides[i] != 1 else idx])
            if wi is not None:
                w = wi if w is None else cx.op("mul", [w, wi])
        v = _reshape(cx, cx.op("index_select", [xf, _reshape(cx, flat, (m,))], {"axis": 0}), (N,) + out_sp + (C,))
        if w is not None:
            v = cx.op("mul", [v, _unsqueeze(cx, w, [len(out_sp) + 1])])
        acc = v if acc is None else cx.op("add", [acc, v])
    return _permute(cx, acc, [0, len(out_sp) + 1] + list(range(1, len(out_sp) + 1)))


@conv("Col2Im")
def _col2im(cx, ins, a):
    x = _float(ins[0], "Col2Im")
    image, block = cx.ints(1, "image_shape"), cx.ints(2, "block_shape")
    nd = len(image)
    if not x.type.is_static:
        raise Unsupported("Col2Im with dynamic shapes")
    if len(block) != nd:
        raise ShapeError(f"Col2Im: image_shape {image} and block_shape {block} differ in rank")
    dil = list(a.get("dilations", [1] * nd))
    strides = list(a.get("strides", [1] * nd))
    pads = list(a.get("pads", [0] * (2 * nd)))
    padded = [image[i] + pads[i] + pads[nd + i] for i in range(nd)]
    blocks = [(padded[i] - dil[i] * (block[i] - 1) - 1) // strides[i] + 1 for i in range(nd)]
    N, CK, L = (int(d) for d in x.shape)
    K = int(np.prod(block))
    if CK % K or L != int(np.prod(blocks)):
        raise ShapeError(f"Col2Im: input {list(x.shape)} does not fit {blocks} blocks of {block}")
    # which (kernel offset, block) column lands on which pixel of the padded image is fixed
    # at compile time: the sum of overlapping columns is a product with a 0/1 matrix
    P = int(np.prod(padded))
    hit = np.zeros((K, L, P), dtype=x.dtype.np)
    for ki, kk in enumerate(np.ndindex(*block)):
        for li, bb in enumerate(np.ndindex(*blocks)):
            pos = [bb[i] * strides[i] + kk[i] * dil[i] for i in range(nd)]
            hit[ki, li, np.ravel_multi_index(pos, padded)] = 1
    cols = _reshape(cx, x, (N, CK // K, K * L))
    y = _reshape(cx, cx.op("matmul", [cols, cx.const_array(hit.reshape(K * L, P), x.dtype)]),
                 (N, CK // K, *padded))
    for i in range(nd):  # crop the padding
        if pads[i] or pads[nd + i]:
            y = cx.op("slice", [y], {"axis": 2 + i, "start": pads[i], "end": pads[i] + image[i]})
    return y


@conv("MelWeightMatrix")
def _mel_weight_matrix(cx, ins, a):
    n_mel, n_dft, rate = int(cx.scalar(0)), int(cx.scalar(1)), int(cx.scalar(2))
    lo, hi = float(cx.scalar(3)), float(cx.scalar(4))
    # triangular filters between mel-spaced edges, snapped to DFT bins
    to_mel = lambda f: 2595 * np.log1p(f / 700) / np.log(10)  # noqa: E731
    edges_mel = to_mel(lo) + np.arange(n_mel + 2) * (to_mel(hi) - to_mel(lo)) / (n_mel + 2)
    edges_hz = 700 * np.expm1(edges_mel / 2595 * np.log(10))
    bins = (((n_dft + 1) * edges_hz) // rate).astype(int)
    w = np.zeros((n_dft // 2 + 1, n_mel))
    for i in range(n_mel):
        left, centre, right = bins[i], bins[i + 1], bins[i + 2]
        if centre == left:
            w[centre, i] = 1
        else:
            j = np.arange(left, centre + 1)
            w[j, i] = (j - left) / (centre - left)
        if right > centre:
            j = np.arange(centre, right)
            w[j, i] = (right - j) / (right - centre)
    dt = onnx_dtype(a.get("output_datatype", 1))
    return cx.const_array(w.astype(dt.np), dt)


@conv("RoiAlign")
def _roi_align(cx, ins, a):
    X, rois, bidx = _float(ins[0], "RoiAlign"), ins[1], ins[2]
    if not (X.type.is_static and rois.type.is_static):
        raise Unsupported("RoiAlign over dynamic shapes")
    ratio = a.get("sampling_ratio", 0)
    if ratio <= 0:
        raise Unsupported("RoiAlign with sampling_ratio=0 (the sampling grid would depend on "
                          "the box sizes, known only at run time)")
    N, C, H, W = (int(d) for d in X.shape)
    R = int(rois.shape[0])
    oh, ow = a.get("output_height", 1), a.get("output_width", 1)
    half = a.get("coordinate_transformation_mode", "half_pixel") == "half_pixel"
    scale = a.get("spatial_scale", 1.0)
    rois = cx.cast(rois, X.dtype)
    k = lambda v: _c(cx, v, X)  # noqa: E731
    col = lambda j: cx.op("slice", [rois], {"axis": 1, "start": j, "end": j + 1})  # noqa: E731

    def axis_taps(j, pooled, length):
        """Per box, bin and sample along one axis: the two neighbour pixels and weights."""
        start = cx.op("sub", [cx.op("mul", [col(j), k(scale)]), k(0.5 if half else 0.0)])
        end = cx.op("sub", [cx.op("mul", [col(j + 2), k(scale)]), k(0.5 if half else 0.0)])
        size = cx.op("sub", [end, start])
        if not half:
            size = cx.op("maximum", [size, k(1.0)])
        step = cx.op("div", [size, k(float(pooled))])                        # [R, 1]
        # sample i of bin p sits at start + step * (p + (i + 0.5) / ratio)
        frac = (np.arange(pooled)[:, None] + (np.arange(ratio)[None, :] + 0.5) / ratio).reshape(1, -1)
        c = cx.op("add", [start, cx.op("mul", [step, cx.const_array(frac.astype(X.dtype.np), X.dtype)])])
        valid = cx.op("logical_and", [cx.op("ge", [c, k(-1.0)]), cx.op("le", [c, k(float(length))])])
        c = cx.op("maximum", [c, k(0.0)])
        low = cx.op("floor", [c])
        at_end = cx.op("ge", [low, k(length - 1.0)])
        low = _where(cx, at_end, k(length - 1.0), low)
        high = _where(cx, at_end, low, cx.op("add", [low, k(1.0)]))
        lf = cx.op("sub", [_where(cx, at_end, low, c), low])
        zero = k(0.0)
        w_low = _where(cx, valid, cx.op("sub", [k(1.0), lf]), zero)
        w_high = _where(cx, valid, lf, zero)
        as_idx = lambda v: _reshape(cx, cx.cast(v, dtypes.i64), (R, pooled, ratio))  # noqa: E731
        as_w = lambda v: _reshape(cx, v, (R, pooled, ratio))  # noqa: E731
        return [(as_idx(low), as_w(w_low)), (as_idx(high), as_w(w_high))]

    ys, xs = axis_taps(1, oh, H), axis_taps(0, ow, W)
    xf = _reshape(cx, _permute(cx, X, (0, 2, 3, 1)), (N * H * W, C))
    boff = _reshape(cx, cx.op("mul", [cx.cast(bidx, dtypes.i64), cx.const(H * W, dtypes.i64)]), (R, 1, 1, 1, 1))
    m = R * oh * ratio * ow * ratio
    mode = a.get("mode", "avg")
    acc = None
    for yi, wy in ys:
        for xi, wx in xs:
            yv, wyv = _reshape(cx, yi, (R, oh, ratio, 1, 1)), _reshape(cx, wy, (R, oh, ratio, 1, 1))
            xv, wxv = _reshape(cx, xi, (R, 1, 1, ow, ratio)), _reshape(cx, wx, (R, 1, 1, ow, ratio))
            idx = cx.op("add", [cx.op("add", [boff, cx.op("mul", [yv, cx.const(W, dtypes.i64)])]), xv])
            v = _reshape(cx, cx.op("index_select", [xf, _reshape(cx, idx, (m,))], {"axis": 0}),
                         (R, oh, ratio, ow, ratio, C))
            v = cx.op("mul", [v, _unsqueeze(cx, cx.op("mul", [wyv, wxv]), [5])])
            acc = v if acc is None else cx.op("add" if mode == "avg" else "maximum", [acc, v])
    if mode == "avg":
        y = cx.op("div", [cx.op("sum", [acc], {"axes": (2, 4), "keepdims": False}), k(float(ratio * ratio))])
    elif mode == "max":  # the largest weighted corner over the samples (as the reference does)
        y = cx.op("max", [acc], {"axes": (2, 4), "keepdims": False})
    else:
        raise Unsupported(f"RoiAlign mode {mode!r}")
    return _permute(cx, y, (0, 3, 1, 2))


@conv("LinearAttention")
def _linear_attention(cx, ins, a):
    q, k, v, past, decay, beta = (ins[i] if cx.has(i) else None for i in range(6))
    rule = a.get("update_rule", "gated_delta")
    gated, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    if rule not in ("linear", "gated", "delta", "gated_delta"):
        raise ShapeError(f"LinearAttention update_rule {rule!r} is not linear/gated/delta/gated_delta")
    if gated != (decay is not None) or delta != (beta is not None):
        raise ShapeError(f"LinearAttention {rule!r}: decay is {'required' if gated else 'not allowed'}, "
                         f"beta is {'required' if delta else 'not allowed'}")
    hq, hkv = a["q_num_heads"], a["kv_num_heads"]
    if hq <= 0 or hkv <= 0 or hq % hkv:
        raise ShapeError(f"LinearAttention: q_num_heads {hq} is not a multiple of kv_num_heads {hkv}")
    if not all(x.type.is_static for x in (q, k, v)):
        raise Unsupported("LinearAttention over dynamic shapes (the recurrence is unrolled)")
    B, T = int(q.shape[0]), int(q.shape[1])
    dk, dv = int(q.shape[2]) // hq, int(v.shape[2]) // hkv
    f32 = dtypes.f32

    def heads(x, h):  # [B, T, h*D] -> [B, h, T, D] in f32
        return _permute(cx, _reshape(cx, cx.cast(x, f32), (B, T, h, int(x.shape[2]) // h)), (0, 2, 1, 3))

    def step(x, t):   # [B, h, T, D] -> [B, h, 1, D]
        return cx.op("slice", [x], {"axis": 2, "start": t, "end": t + 1})

    q4, k4, v4 = heads(q, hq), heads(k, hkv), heads(v, hkv)
    if decay is not None:
        last = int(decay.shape[2])
        if last not in (hkv, hkv * dk):
            raise ShapeError(f"LinearAttention: decay's last dim {last} is neither {hkv} nor {hkv * dk}")
        g4 = heads(decay, hkv)                                  # [B, hkv, T, 1 or dk]
    if beta is not None:
        b4 = heads(beta, int(beta.shape[2]))                    # [B, hkv or 1, T, 1]
    state = cx.cast(past, f32) if past is not None else cx.op(
        "full", [], {"shape": (B, hkv, dk, dv), "value": 0.0, "dtype": f32})
    scale = a.get("scale", 0.0) or 1.0 / math.sqrt(dk)
    group = hq // hkv
    outs = []
    # the recurrence, unrolled over the (static) sequence: each step is a few small matmuls
    for t in range(T):
        kt, vt = step(k4, t), step(v4, t)                       # [B, hkv, 1, dk|dv]
        if gated:
            gt = step(g4, t)
            state = cx.op("mul", [state, _reshape(cx, cx.op("exp", [gt]), (B, hkv, int(gt.shape[3]), 1))])
        if delta:
            vt = cx.op("mul", [step(b4, t), cx.op("sub", [vt, cx.op("matmul", [kt, state])])])
        state = cx.op("add", [state, cx.op("mul", [_reshape(cx, kt, (B, hkv, dk, 1)), vt])])
        read = state
        if group > 1:  # each kv head's state serves `group` query heads
            read = _reshape(cx, cx.op("expand", [_reshape(cx, state, (B, hkv, 1, dk, dv))],
                                      {"shape": (B, hkv, group, dk, dv)}), (B, hq, dk, dv))
        outs.append(cx.op("mul", [cx.op("matmul", [step(q4, t), read]), _c(cx, scale, read)]))
    o = outs[0] if T == 1 else cx.op("concat", outs, {"axis": 2})   # [B, hq, T, dv]
    o = _reshape(cx, _permute(cx, o, (0, 2, 1, 3)), (B, T, hq * dv))
    return [cx.cast(o, q.dtype), cx.cast(state, past.dtype if past is not None else q.dtype)]


# ---------------------------------------------------------------- pooling of any rank
#
# Max and sum over a box are separable: pool along one spatial axis at a time, each a few
# strided slices combined elementwise. An average divides by the count of the window's
# taps that count, which is the product of per-axis counts (the window is a box). This
# covers what the 2-D pooling ops lack: 3-D windows and dilated averages.

def _pool_nd(cx, x, kind, a):
    nd = _rank(x) - 2
    if not x.type.is_static:
        raise Unsupported(f"{nd}-D pooling over dynamic shapes")
    kernel = list(a["kernel_shape"])
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    ceil = bool(a.get("ceil_mode", 0))
    include = bool(a.get("count_include_pad", 0))
    pb, pe = _spatial_pads(cx, a, x.shape[2:], kernel, strides, dil)
    from ..ir.ops.nn import conv_out
    if kind == "max" and not x.dtype.is_float:
        x = cx.cast(x, dtypes.f32)  # exact for the narrow integers pooling meets
    fill = -math.inf if kind == "max" else 0.0
    count = np.ones([1] * (nd + 2))
    for i in range(nd):
        ax, n, k, s, d = 2 + i, int(x.shape[2 + i]), kernel[i], strides[i], dil[i]
        out = conv_out(n, k, s, pb[i], pe[i], d, ceil)
        need = (out - 1) * s + (k - 1) * d + 1          # padded length the taps reach
        right = max(need - n - pb[i], 0)
        pads = [0] * (2 * _rank(x))
        pads[2 * ax], pads[2 * ax + 1] = pb[i], right
        xp = cx.op("pad", [x], {"pads": tuple(pads), "value": fill}) if pb[i] or right else x
        acc = None
        for j in range(k):
            tap = cx.op("slice", [xp], {"axis": ax, "start": j * d, "end": j * d + (out - 1) * s + 1, "step": s})
            acc = tap if acc is None else cx.op("maximum" if kind == "max" else "add", [acc, tap])
        x = acc
        pos = np.arange(out)[:, None] * s - pb[i] + np.arange(k)[None, :] * d
        lo, hi = (-pb[i], n + pe[i]) if include else (0, n)
        shape = [1] * (nd + 2)
        shape[ax] = out
        count = count * ((pos >= lo) & (pos < hi)).sum(axis=1).reshape(shape)
    if kind == "max":
        return x
    return x, count


def _pool_any(kind):
    def f(cx, ins, a):
        x = ins[0]
        nd = _rank(x) - 2
        dilated = any(d != 1 for d in a.get("dilations", [1] * nd))
        if nd in (1, 2) and not (kind == "avg" and dilated):  # the 2-D pooling ops
            return _max_pool(cx, ins, a) if kind == "max" else _pool("avg")(cx, ins, a)
        if len([o for o in cx.node.output if o]) > 1:
            raise Unsupported("MaxPool's Indices output (only 2-D)")
        if kind == "max":
            return cx.cast(_pool_nd(cx, x, "max", a), x.dtype)
        s, count = _pool_nd(cx, _float(x, "AveragePool"), "sum", a)
        return cx.op("div", [s, cx.const_array(count.astype(x.dtype.np), x.dtype)])
    return f


CONVERTERS["MaxPool"] = _pool_any("max")
CONVERTERS["AveragePool"] = _pool_any("avg")


@conv("LpPool")
def _lp_pool_any(cx, ins, a):
    x = ins[0]
    if _rank(x) - 2 in (1, 2):
        return _lp_pool_2d(cx, ins, a)
    p = a.get("p", 2)
    xp = cx.op("mul", [x, x]) if p == 2 else cx.op("pow", [cx.op("abs", [x]), _c(cx, float(p), x)])
    s, _ = _pool_nd(cx, _float(xp, "LpPool"), "sum", {**a, "count_include_pad": 1})
    return cx.op("sqrt", [s]) if p == 2 else cx.op("pow", [s, _c(cx, 1.0 / p, s)])


def _batch_norm_training(cx, x, s, b, mean, var, a):
    """BatchNormalization with training_mode=1: normalize with the batch's own statistics
    (biased variance) and blend them into the running ones by ``momentum``."""
    x = _float(x, "BatchNormalization")
    if cx.opset < 14:
        raise Unsupported("BatchNormalization training outputs before opset 14")
    axes = [0] + list(range(2, _rank(x)))
    bm, d, bv = _moments(cx, x, axes)                      # kept dims: [1, C, 1, ...]
    shape = (1, x.shape[1]) + (1,) * (_rank(x) - 2)
    inv = cx.op("rsqrt", [cx.op("add", [bv, _c(cx, a.get("epsilon", 1e-5), x)])])
    y = cx.op("add", [cx.op("mul", [cx.op("mul", [d, inv]), _reshape(cx, s, shape)]), _reshape(cx, b, shape)])
    mom = a.get("momentum", 0.9)
    flat = lambda v: _reshape(cx, v, (x.shape[1],))  # noqa: E731
    blend = lambda run, cur: cx.op("add", [cx.op("mul", [run, _c(cx, mom, run)]),  # noqa: E731
                                           cx.op("mul", [flat(cur), _c(cx, 1.0 - mom, run)])])
    return [y, blend(mean, bm), blend(var, bv)]


@conv("DeformConv")
def _deform_conv(cx, ins, a):
    X, Wt, off = _float(ins[0], "DeformConv"), ins[1], ins[2]
    B = ins[3] if cx.has(3) else None
    mask = ins[4] if cx.has(4) else None
    if _rank(X) != 4:
        raise Unsupported(f"DeformConv of rank {_rank(X)} (only 2-D)")
    if not all(v.type.is_static for v in (X, Wt, off)):
        raise Unsupported("DeformConv over dynamic shapes")
    N, C, H, W = (int(d) for d in X.shape)
    OC, cpg, kh, kw = (int(d) for d in Wt.shape)
    oh, ow = int(off.shape[2]), int(off.shape[3])
    G, groups = a.get("offset_group", 1), a.get("group", 1)
    sh, sw = a.get("strides", [1, 1])
    dh, dw = a.get("dilations", [1, 1])
    pads = a.get("pads", [0, 0, 0, 0])
    if C != cpg * groups or C % G or int(off.shape[1]) != G * kh * kw * 2:
        raise ShapeError(f"DeformConv: X {list(X.shape)}, W {list(Wt.shape)} and offset "
                         f"{list(off.shape)} do not fit group={groups}, offset_group={G}")
    K, O = kh * kw, oh * ow
    k = lambda v: _c(cx, v, X)  # noqa: E731
    off = _reshape(cx, cx.cast(off, X.dtype), (N, G, kh, kw, 2, oh, ow))
    if mask is not None:
        mask = _reshape(cx, cx.cast(mask, X.dtype), (N, G, kh, kw, oh, ow))
    # where tap (i, j) of output (p, q) reads before its offset
    y0 = (np.arange(kh)[:, None] * dh + np.arange(oh)[None, :] * sh - pads[0]).reshape(1, kh, 1, oh, 1)
    x0 = (np.arange(kw)[:, None] * dw + np.arange(ow)[None, :] * sw - pads[1]).reshape(1, 1, kw, 1, ow)
    cg = C // G
    xf = _reshape(cx, _permute(cx, X, (0, 2, 3, 1)), (N * H * W, C))
    base = _reshape(cx, cx.const_array(np.arange(N, dtype=np.int64) * H * W, dtypes.i64), (N, 1, 1, 1, 1))
    cols = []
    for g in range(G):
        off_g = cx.op("slice", [off], {"axis": 1, "start": g, "end": g + 1})
        taps = []
        for c0, length, pos in ((0, H, y0), (1, W, x0)):  # bilinear taps along y, then x
            delta = _reshape(cx, cx.op("slice", [off_g], {"axis": 4, "start": c0, "end": c0 + 1}),
                             (N, kh, kw, oh, ow))
            coord = cx.op("add", [delta, cx.const_array(pos.astype(X.dtype.np), X.dtype)])
            lo = cx.op("floor", [coord])
            t = cx.op("sub", [coord, lo])
            axis = []
            for idx, wgt in ((lo, cx.op("sub", [k(1.0), t])), (cx.op("add", [lo, k(1.0)]), t)):
                ok = cx.op("logical_and", [cx.op("ge", [idx, k(0.0)]), cx.op("le", [idx, k(length - 1.0)])])
                axis.append((cx.cast(cx.op("clamp", [idx], {"min": 0.0, "max": length - 1.0}), dtypes.i64),
                             _where(cx, ok, wgt, k(0.0))))
            taps.append(axis)
        xg = cx.op("slice", [xf], {"axis": 1, "start": g * cg, "end": (g + 1) * cg}) if G > 1 else xf
        acc = None
        for yi, wy in taps[0]:
            for xi, wx in taps[1]:
                flat = cx.op("add", [cx.op("add", [base, cx.op("mul", [yi, cx.const(W, dtypes.i64)])]), xi])
                v = _reshape(cx, cx.op("index_select", [xg, _reshape(cx, flat, (N * K * O,))], {"axis": 0}),
                             (N, kh, kw, oh, ow, cg))
                wgt = cx.op("mul", [wy, wx])
                if mask is not None:
                    wgt = cx.op("mul", [wgt, _reshape(cx, cx.op("slice", [mask], {"axis": 1, "start": g, "end": g + 1}),
                                                      (N, kh, kw, oh, ow))])
                v = cx.op("mul", [v, _unsqueeze(cx, wgt, [5])])
                acc = v if acc is None else cx.op("add", [acc, v])
        cols.append(acc)                                               # [N, kh, kw, oh, ow, cg]
    cols = cols[0] if G == 1 else cx.op("concat", cols, {"axis": 5})   # [N, kh, kw, oh, ow, C]
    cols = _reshape(cx, _permute(cx, cols, (0, 3, 4, 5, 1, 2)), (N, O, C * K))
    # the convolution proper: per group, the sampled columns times the flattened kernel
    ocg = OC // groups
    outs = []
    for gi in range(groups):
        cg_cols = cols if groups == 1 else cx.op("slice", [cols], {"axis": 2, "start": gi * cpg * K,
                                                                   "end": (gi + 1) * cpg * K})
        wg = Wt if groups == 1 else cx.op("slice", [Wt], {"axis": 0, "start": gi * ocg, "end": (gi + 1) * ocg})
        wm = _permute(cx, _reshape(cx, wg, (ocg, cpg * K)), (1, 0))
        outs.append(cx.op("matmul", [cg_cols, wm]))                   # [N, O, ocg]
    y = outs[0] if groups == 1 else cx.op("concat", outs, {"axis": 2})
    if B is not None:
        y = cx.op("add", [y, B])
    return _reshape(cx, _permute(cx, y, (0, 2, 1)), (N, OC, oh, ow))


@conv("BitCast")
def _bitcast(cx, ins, a):
    x, dt = ins[0], onnx_dtype(a["to"])
    if x.dtype.itemsize != dt.itemsize:
        raise ShapeError(f"BitCast from {x.dtype} to {dt}: the widths differ")
    return x if x.dtype is dt else cx.op("bitcast", [x], {"dtype": dt})


# ---------------------------------------------------------------- control flow, resolved at compile time
#
# Ember graphs are straight-line, so If, Loop and Scan are expanded while importing: If
# takes the branch its (compile-time) condition picks, Scan and Loop are unrolled over
# their static trip counts. A condition or trip count computed from the data at run time
# is reported like any other input needed at compile time (NeedsConstant).

_MAX_UNROLL = 4096


def _run_subgraph(cx, g, bind: dict, what: str) -> list:
    """Convert ONNX subgraph ``g`` inline, its formal inputs bound to ``bind`` (name ->
    Value or Known); returns the values of its outputs. Outer-scope names stay visible."""
    from .onnx import NeedsConstant, _check_graph, _convert_node, tensor_to_numpy
    saved = (cx.node, cx.raw, cx.source)
    for t in g.initializer:
        cx.env[t.name] = cx.const_array(tensor_to_numpy(t), onnx_dtype(t.data_type))
    cx.env.update(bind)
    unsupported, needs = [], set()
    made = {o for n in g.node for o in n.output}  # (re)defined by this pass over the body
    for n in _check_graph(g, set(cx.env) - made):
        _convert_node(cx, n, sys.modules[__name__], unsupported, needs, depth=1)
    cx.node, cx.raw, cx.source = saved
    if needs:
        raise NeedsConstant(f"{what} needs values known at compile time", needs)
    if unsupported:
        raise Unsupported(f"{what}: " + "; ".join(f"{u['op']} ({u['source'] or u['node']})"
                                                 for u in unsupported))
    return [cx.env[o.name] for o in g.output]


def _as_value(cx, v):
    return cx.materialize(v) if isinstance(v, Known) else v


@conv("If")
def _if(cx, ins, a):
    cond = bool(cx.scalar(0))
    branch = a["then_branch" if cond else "else_branch"].g
    return _run_subgraph(cx, branch, {}, f"If's {'then' if cond else 'else'} branch")


def _stack(cx, parts, axis):
    """Tensors of one shape stacked along a new ``axis``."""
    r = _rank(parts[0]) + 1
    ax = _axis(axis, r)
    parts = [_unsqueeze(cx, p, [ax]) for p in parts]
    return parts[0] if len(parts) == 1 else cx.op("concat", parts, {"axis": ax})


@conv("Scan")
def _scan(cx, ins, a):
    if cx.opset < 9:
        return _scan8(cx, ins, a)
    return _scan_values(cx, list(ins), a)


def _scan8(cx, ins, a):
    """Scan-8: every input has a leading batch dim (scanned along dim 1) and the sequence
    lengths come first; each batch entry is scanned on its own and the results restacked."""
    if cx.has(0):
        lens = cx.const_value(0)
        if lens is None or len(set(np.asarray(lens).reshape(-1).tolist())) > 1:
            raise Unsupported("Scan-8 with per-batch sequence_lens")
    vals = [v for v in ins][1:]
    B = vals[0].shape[0]
    if not isinstance(B, int):
        raise Unsupported("Scan-8 over a dynamic batch")
    attrs = {**a, "scan_input_directions": a.get("directions", [0] * a["num_scan_inputs"])}
    per_batch = []
    for b in range(B):
        row = [_reshape(cx, cx.op("slice", [v], {"axis": 0, "start": b, "end": b + 1}), v.shape[1:]) for v in vals]
        per_batch.append(_scan_values(cx, row, attrs))
    return [_stack(cx, [r[j] for r in per_batch], 0) for j in range(len(per_batch[0]))]


def _scan_values(cx, vals, a):
    body = a["body"].g
    n_scan = a["num_scan_inputs"]
    states, xs = vals[:len(vals) - n_scan], vals[len(vals) - n_scan:]
    in_axes = list(a.get("scan_input_axes", [0] * n_scan))
    in_dirs = list(a.get("scan_input_directions", [0] * n_scan))
    n_out = len(body.output) - len(states)
    out_axes = list(a.get("scan_output_axes", [0] * n_out))
    out_dirs = list(a.get("scan_output_directions", [0] * n_out))
    in_axes = [_axis(ax, _rank(x)) for ax, x in zip(in_axes, xs)]
    lengths = {x.shape[ax] for x, ax in zip(xs, in_axes)}
    if len(lengths) != 1 or not isinstance(next(iter(lengths)), int):
        raise Unsupported("Scan over scan inputs of different or dynamic lengths")
    T = next(iter(lengths))
    if T > _MAX_UNROLL:
        raise Unsupported(f"Scan over {T} steps (unrolled; at most {_MAX_UNROLL})")
    names = [i.name for i in body.input]
    outs = [[] for _ in range(n_out)]
    for t in range(T):
        step = []
        for x, ax, rev in zip(xs, in_axes, in_dirs):
            k = T - 1 - t if rev else t
            s = cx.op("slice", [x], {"axis": ax, "start": k, "end": k + 1})
            step.append(_reshape(cx, s, [d for j, d in enumerate(x.shape) if j != ax]))
        res = _run_subgraph(cx, body, dict(zip(names, states + step)), f"Scan body (step {t})")
        states = [_as_value(cx, v) for v in res[:len(states)]]
        for j, v in enumerate(res[len(states):]):
            outs[j].append(_as_value(cx, v))
    stacked = []
    for j, parts in enumerate(outs):
        if out_dirs[j]:
            parts = parts[::-1]
        stacked.append(_stack(cx, parts, out_axes[j]))
    return states + stacked


@conv("Loop")
def _loop(cx, ins, a):
    body = a["body"].g
    trips = int(cx.scalar(0)) if cx.has(0) else None
    cond = bool(cx.scalar(1)) if cx.has(1) else True
    carried = [v for v in cx.raw[2:]]
    names = [i.name for i in body.input]
    n_carried = len(carried)
    scans: list[list] = [[] for _ in range(len(body.output) - 1 - n_carried)]
    it = 0
    while cond and (trips is None or it < trips):
        if it >= _MAX_UNROLL:
            raise Unsupported(f"Loop of more than {_MAX_UNROLL} iterations (unrolled at compile time)")
        bind = dict(zip(names, [cx.const_array(np.array(it, np.int64), dtypes.i64),
                                cx.const_array(np.array(cond), dtypes.bool_)] + carried))
        res = _run_subgraph(cx, body, bind, f"Loop body (iteration {it})")
        c = res[0]
        cv = c.data if isinstance(c, Value) and c.kind == "const" else None
        if cv is None:
            raise Unsupported("Loop whose condition is computed from run-time data")
        cond = bool(np.asarray(cv).reshape(-1)[0])
        carried = res[1:1 + n_carried]
        for j, v in enumerate(res[1 + n_carried:]):
            scans[j].append(_as_value(cx, v))
        it += 1
    if any(not s for s in scans):
        raise Unsupported("Loop with scan outputs and zero iterations (an empty tensor)")
    return [_as_value(cx, v) for v in carried] + [_stack(cx, s, 0) for s in scans]


# ---------------------------------------------------------------- 3-D convolution

def _conv3d(cx, x, w, b, strides, dil, groups):
    """A 3-D convolution of an already padded x [N, C, D, H, W]: one 2-D convolution per
    depth tap (the output depths folded into the batch), summed."""
    N, C, D, H, W = x.shape
    M, kd = w.shape[0], w.shape[2]
    if not all(isinstance(v, int) for v in (N, D, kd)):
        raise Unsupported("3-D convolution over dynamic batch or depth")
    od = (D - dil[0] * (kd - 1) - 1) // strides[0] + 1
    acc = None
    for j in range(kd):
        xs = cx.op("slice", [x], {"axis": 2, "start": j * dil[0], "end": j * dil[0] + (od - 1) * strides[0] + 1,
                                  "step": strides[0]})
        xs = _reshape(cx, _permute(cx, xs, (0, 2, 1, 3, 4)), (N * od, C, H, W))
        wj = _reshape(cx, cx.op("slice", [w], {"axis": 2, "start": j, "end": j + 1}),
                      (M, w.shape[1], w.shape[3], w.shape[4]))
        y = cx.op("conv2d", [xs, wj], {"stride": tuple(strides[1:]), "padding": (0, 0),
                                       "dilation": tuple(dil[1:]), "groups": groups})
        acc = y if acc is None else cx.op("add", [acc, y])
    y = _permute(cx, _reshape(cx, acc, (N, od, M, acc.shape[2], acc.shape[3])), (0, 2, 1, 3, 4))
    return y if b is None else cx.op("add", [y, _reshape(cx, b, (M, 1, 1, 1))])


@conv("Conv")
def _conv_any(cx, ins, a):
    x, w, b = ins[0], ins[1], ins[2]
    nd = _rank(x) - 2
    if nd != 3:
        return _conv_2d(cx, ins, a)
    kernel = list(a.get("kernel_shape") or w.shape[2:])
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    pb, pe = _spatial_pads(cx, a, x.shape[2:], kernel, strides, dil)
    if any(pb + pe):
        x = cx.op("pad", [x], {"pads": (0, 0, 0, 0) + tuple(v for i in range(nd) for v in (pb[i], pe[i]))})
    return _conv3d(cx, x, w, b, strides, dil, a.get("group", 1))


@conv("ConvTranspose")
def _conv_transpose_any(cx, ins, a):
    x, w, b = ins[0], ins[1], ins[2]
    nd = _rank(x) - 2
    if nd != 3:
        return _conv_transpose_2d(cx, ins, a)
    if "output_shape" in a or a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise Unsupported("3-D ConvTranspose with output_shape or auto_pad SAME")
    if not x.type.is_static:
        raise Unsupported("3-D ConvTranspose over dynamic shapes")
    g = a.get("group", 1)
    kernel = list(a.get("kernel_shape") or w.shape[2:])
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    pads = list(a.get("pads", [0] * (2 * nd)))
    opad = list(a.get("output_padding", [0] * nd))
    # the transpose of a convolution is a convolution of the input spread out by the strides
    # (zeros between elements) and padded by the kernel's reach, with the kernel flipped
    for i in range(nd):
        ax, s, n = 2 + i, strides[i], int(x.shape[2 + i])
        if s > 1:
            shape = list(x.shape)
            y = _reshape(cx, x, shape[:ax + 1] + [1] + shape[ax + 1:])
            p = [0] * (2 * (_rank(x) + 1))
            p[2 * (ax + 1) + 1] = s - 1
            y = _reshape(cx, cx.op("pad", [y], {"pads": tuple(p)}), shape[:ax] + [n * s] + shape[ax + 1:])
            x = cx.op("slice", [y], {"axis": ax, "start": 0, "end": (n - 1) * s + 1})
    lo = [dil[i] * (kernel[i] - 1) - pads[i] for i in range(nd)]
    hi = [dil[i] * (kernel[i] - 1) - pads[nd + i] + opad[i] for i in range(nd)]
    if min(lo + hi) < 0:
        raise Unsupported("ConvTranspose with pads larger than the kernel")
    x = cx.op("pad", [x], {"pads": (0, 0, 0, 0) + tuple(v for i in range(nd) for v in (lo[i], hi[i]))})
    wf = w
    for i in range(nd):
        wf = _reverse(cx, wf, 2 + i)
    cin, coutg = w.shape[0], w.shape[1]
    wf = _reshape(cx, wf, (g, cin // g, coutg, *kernel))
    wf = _reshape(cx, _permute(cx, wf, (0, 2, 1, 3, 4, 5)), (g * coutg, cin // g, *kernel))
    return _conv3d(cx, x, wf, b, [1] * nd, dil, g)


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
