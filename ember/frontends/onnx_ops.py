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

import math

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


# the rest of the table, one module per family (each registers into CONVERTERS on import)
from . import (onnx_ops_control, onnx_ops_domains, onnx_ops_index, onnx_ops_misc,  # noqa: E402,F401
               onnx_ops_resize, onnx_ops_spatial)
from .onnx_ops_index import _highest, _lowest  # noqa: E402  (used by the reductions above)
from .onnx_ops_spatial import _batch_norm_training  # noqa: E402  (used by BatchNormalization above)
