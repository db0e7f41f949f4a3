"""Reductions and the normalizations built on them (softmax, layer norm)."""
from __future__ import annotations

import numpy as np

from ... import errors
from .. import dtypes
from ..graph import TensorType
from .registry import Attr, norm_axis, register

_AXES = {"axes": Attr("ints"), "keepdims": Attr("bool", False)}


def reduced_shape(shape, axes, keepdims):
    return tuple((1 if keepdims else None) if i in axes else d
                 for i, d in enumerate(shape) if keepdims or i not in axes)


def _reduce_infer(name, out_dtype=None):
    def infer(ts, a):
        t = ts[0]
        axes = {norm_axis(x, t.rank, name) for x in a["axes"]}
        if name == "mean" and not t.dtype.is_float:
            raise errors.DTypeError(f"mean needs a floating-point input, got {t.dtype}")
        return [TensorType(out_dtype or t.dtype, reduced_shape(t.shape, axes, a["keepdims"]))]
    return infer


def _reduce_ref(fn):
    def ref(xs, a):
        x = xs[0]
        axes = tuple(ax % max(x.ndim, 1) for ax in a["axes"])
        if x.dtype == np.float16:
            return fn(x.astype(np.float32), axis=axes, keepdims=a["keepdims"]).astype(np.float16)
        return np.asarray(fn(x, axis=axes, keepdims=a["keepdims"])).astype(x.dtype)
    return ref


for _name, _fn in {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min,
                   "prod": np.prod}.items():
    register(_name, _reduce_infer(_name), _reduce_ref(_fn), attrs=dict(_AXES), category="reduce")


def _argmax_infer(ts, a):
    t = ts[0]
    ax = norm_axis(a["axis"], t.rank, "argmax")
    return [TensorType(dtypes.i64, reduced_shape(t.shape, {ax}, a["keepdims"]))]


register("argmax", _argmax_infer,
         lambda xs, a: np.argmax(xs[0], axis=a["axis"], keepdims=a["keepdims"]).astype(np.int64),
         attrs={"axis": Attr("int"), "keepdims": Attr("bool", False)}, category="reduce",
         doc="index of the first maximum along axis")


def softmax(x, axis):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return (e / np.sum(e, axis=axis, keepdims=True)).astype(x.dtype)


def log_softmax(x, axis):
    m = np.max(x, axis=axis, keepdims=True)
    s = x - m
    return (s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))).astype(x.dtype)


def _float_same(name):
    def infer(ts, a):
        t = ts[0]
        if not t.dtype.is_float:
            raise errors.DTypeError(f"{name} needs a floating-point input, got {t.dtype}")
        norm_axis(a["axis"], t.rank, name)
        return [t]
    return infer


register("softmax", _float_same("softmax"), lambda xs, a: softmax(xs[0], a["axis"]),
         attrs={"axis": Attr("int")}, category="reduce")
register("log_softmax", _float_same("log_softmax"), lambda xs, a: log_softmax(xs[0], a["axis"]),
         attrs={"axis": Attr("int")}, category="reduce")


def _layer_norm_infer(ts, a):
    x = ts[0]
    ax = norm_axis(a["axis"], x.rank, "layer_norm")
    for t in ts[1:]:
        if tuple(t.shape) != tuple(x.shape[ax:]):
            raise errors.ShapeError(f"layer_norm: weight/bias shape {list(t.shape)} must be "
                                    f"the normalized shape {list(x.shape[ax:])}")
    return [x]


def layer_norm(x, w=None, b=None, axis=-1, eps=1e-5):
    axes = tuple(range(axis % x.ndim, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + x.dtype.type(eps))
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y.astype(x.dtype)


register("layer_norm", _layer_norm_infer,
         lambda xs, a: layer_norm(*xs, axis=a["axis"], eps=a["eps"]),
         attrs={"axis": Attr("int", -1), "eps": Attr("float", 1e-5)}, arity=(1, 3),
         category="reduce", doc="layer_norm(x, [weight], [bias]) over dims axis..end")


def rms_norm(x, w=None, axis=-1, eps=1e-6):
    axes = tuple(range(axis % x.ndim, x.ndim))
    y = x / np.sqrt((x * x).mean(axis=axes, keepdims=True) + x.dtype.type(eps))
    return (y * w if w is not None else y).astype(x.dtype)


register("rms_norm", _layer_norm_infer,
         lambda xs, a: rms_norm(*xs, axis=a["axis"], eps=a["eps"]),
         attrs={"axis": Attr("int", -1), "eps": Attr("float", 1e-6)}, arity=(1, 2),
         category="reduce", doc="rms_norm(x, [weight]) = x / sqrt(mean(x^2) + eps) * weight (Llama)")


def _cumsum_infer(ts, a):
    norm_axis(a["axis"], ts[0].rank, "cumsum")
    if ts[0].dtype is dtypes.bool_:
        raise errors.DTypeError("cumsum: cast bool inputs to an integer type first")
    return [ts[0]]


register("cumsum", _cumsum_infer,
         lambda xs, a: np.cumsum(xs[0], axis=a["axis"]).astype(xs[0].dtype),
         attrs={"axis": Attr("int")}, category="reduce", doc="running sum along axis")
