"""Pointwise ops: unary math, binary arithmetic with numpy broadcasting, compare, where, cast."""
from __future__ import annotations

import math

import numpy as np

from ... import errors
from .. import dtypes
from ..graph import TensorType
from .registry import Attr, broadcast_shapes, register, same_dtype

_erf = np.frompyfunc(math.erf, 1, 1)


def _compute(x: np.ndarray, fn):
    """Evaluate in at least float32 and round back (f16 / bf16 math happens in f32)."""
    if x.dtype == np.float16:
        return fn(x.astype(np.float32)).astype(np.float16)
    return fn(x)


def erf(x):
    return _erf(x.astype(np.float64)).astype(np.float64).astype(x.dtype)


def gelu(x, approximate="none"):
    if approximate == "tanh":
        c = np.sqrt(2.0 / np.pi).astype(x.dtype)
        return (0.5 * x * (1.0 + np.tanh(c * (x + x.dtype.type(0.044715) * x * x * x)))).astype(x.dtype)
    return (0.5 * x * (1.0 + erf(x * x.dtype.type(1 / math.sqrt(2))))).astype(x.dtype)


def sigmoid(x):
    # split by sign so that exp never overflows
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


# name -> (numpy reference, float-only?)
UNARY = {
    "neg": (np.negative, False),
    "abs": (np.abs, False),
    "exp": (np.exp, True),
    "log": (np.log, True),
    "sqrt": (np.sqrt, True),
    "rsqrt": (lambda x: (1 / np.sqrt(x)).astype(x.dtype), True),
    "reciprocal": (lambda x: (1 / x).astype(x.dtype), True),
    "tanh": (np.tanh, True),
    "erf": (erf, True),
    "sigmoid": (sigmoid, True),
    "relu": (lambda x: np.maximum(x, x.dtype.type(0)), False),
    "silu": (lambda x: (x * sigmoid(x)).astype(x.dtype), True),
    "sin": (np.sin, True),
    "cos": (np.cos, True),
    "floor": (np.floor, True),
    "ceil": (np.ceil, True),
    "sign": (np.sign, False),
}


def _unary_infer(name, float_only):
    def infer(ts, attrs):
        t = ts[0]
        if float_only and not t.dtype.is_float:
            raise errors.DTypeError(f"op {name!r} needs a floating-point input, got {t.dtype}")
        if t.dtype is dtypes.bool_ and name != "abs":
            raise errors.DTypeError(f"op {name!r} is not defined on bool")
        return [t]
    return infer


for _name, (_fn, _float_only) in UNARY.items():
    register(_name, _unary_infer(_name, _float_only),
             (lambda fn: lambda xs, a: _compute(xs[0], fn))(_fn), category="elementwise")

register("gelu", _unary_infer("gelu", True),
         lambda xs, a: _compute(xs[0], lambda x: gelu(x, a["approximate"])),
         attrs={"approximate": Attr("str", "none")}, category="elementwise",
         doc='GELU; approximate="none" (erf) or "tanh"')


def _clamp_ref(xs, a):
    x = xs[0]
    lo = -np.inf if a["min"] is None else a["min"]
    hi = np.inf if a["max"] is None else a["max"]
    return np.clip(x, lo, hi).astype(x.dtype)


register("clamp", lambda ts, a: [ts[0]], _clamp_ref,
         attrs={"min": Attr("float", None, optional=True), "max": Attr("float", None, optional=True)},
         category="elementwise")

register("logical_not", lambda ts, a: [TensorType(dtypes.bool_, ts[0].shape)],
         lambda xs, a: np.logical_not(xs[0]), category="elementwise")


def _cast_ref(xs, a):
    x, dt = xs[0], a["dtype"]
    if dt is dtypes.bool_:
        return x != 0
    if dt.is_float or not x.dtype.kind == "f":
        return x.astype(dt.np)
    # float -> int truncates toward zero, like C and torch
    return np.trunc(x).astype(dt.np)


register("cast", lambda ts, a: [TensorType(a["dtype"], ts[0].shape)], _cast_ref,
         attrs={"dtype": Attr("dtype")}, category="elementwise")


def _int_div(a, b):
    # torch's integer true division is float; ints here mean floor division (aten.div floor mode)
    return np.floor_divide(a, b)


def _is_float(a) -> bool:
    return a.dtype.kind == "f" or a.dtype.name == "bfloat16"  # ml_dtypes' kind is "V"


BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply,
    "div": lambda a, b: np.divide(a, b).astype(a.dtype) if _is_float(a) else _int_div(a, b),
    "pow": np.power, "maximum": np.maximum, "minimum": np.minimum,
    "mod": lambda a, b: np.fmod(a, b) if _is_float(a) else np.mod(a, b),
}
COMPARE = {"eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal,
           "gt": np.greater, "ge": np.greater_equal}
LOGICAL = {"logical_and": np.logical_and, "logical_or": np.logical_or,
           "logical_xor": np.logical_xor}


def _binary_infer(name, out_bool=False, need_bool=False):
    def infer(ts, attrs):
        dt = same_dtype(name, ts)
        if need_bool and dt is not dtypes.bool_:
            raise errors.DTypeError(f"op {name!r} needs bool inputs, got {dt}")
        shape = broadcast_shapes(ts[0].shape, ts[1].shape)
        return [TensorType(dtypes.bool_ if out_bool else dt, shape)]
    return infer


def _binary_ref(fn, keep_dtype=True):
    def ref(xs, a):
        x, y = xs
        with np.errstate(all="ignore"):
            if x.dtype == np.float16:
                r = fn(x.astype(np.float32), y.astype(np.float32))
                return r.astype(np.float16) if keep_dtype else r
            r = fn(x, y)
        return np.asarray(r).astype(x.dtype) if keep_dtype else np.asarray(r)
    return ref


for _name, _fn in BINARY.items():
    register(_name, _binary_infer(_name), _binary_ref(_fn), arity=(2, 2), category="elementwise")
for _name, _fn in COMPARE.items():
    register(_name, _binary_infer(_name, out_bool=True), _binary_ref(_fn, False),
             arity=(2, 2), category="elementwise")
for _name, _fn in LOGICAL.items():
    register(_name, _binary_infer(_name, out_bool=True, need_bool=True), _binary_ref(_fn, False),
             arity=(2, 2), category="elementwise")


def _where_infer(ts, a):
    if ts[0].dtype is not dtypes.bool_:
        raise errors.DTypeError(f"where: condition must be bool, got {ts[0].dtype}")
    dt = same_dtype("where", ts[1:])
    return [TensorType(dt, broadcast_shapes(*(t.shape for t in ts)))]


register("where", _where_infer, lambda xs, a: np.where(xs[0], xs[1], xs[2]).astype(xs[1].dtype),
         arity=(3, 3), category="elementwise", doc="where(cond, a, b): a where cond else b")
