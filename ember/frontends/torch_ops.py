"""The ATen op table of the PyTorch frontend: one small converter per core ATen overload.

A converter gets the Importer ``cx`` and the node's arguments with FX nodes replaced by what
they became (Ember ``Value``, Dim, list...). It returns a Value, a list (multi-output ops),
a Dim, or None (ops with no result, such as asserts). Torch's output dtype is known from the
node's metadata (``cx.out_dtype()``), so arithmetic casts its operands to it: that *is*
torch's type promotion, computed by torch. Shapes likewise come from ``cx.out_shape()``
whenever an op only moves data (view, expand, squeeze...): torch already resolved -1 and
symbolic sizes there.
"""
from __future__ import annotations

import math

import torch

from ..ir import dtypes
from ..ir.graph import Value
from ..ir.symbolic import SymExpr, prod
from .torch import Unsupported, ember_dtype

CONVERTERS: dict = {}


def conv(*names):
    def deco(fn):
        for n in names:
            CONVERTERS[n] = fn
        return fn
    return deco


def _axis(d: int, rank: int) -> int:
    return d % max(rank, 1)


def _rank(v: Value) -> int:
    return len(v.shape)


# ---------------------------------------------------------------- no-ops and asserts

@conv("aten.clone.default", "aten.alias.default", "aten.detach.default", "aten.lift_fresh_copy.default",
      "aten.contiguous.default", "aten.copy.default")
def _identity(cx, x, *rest, **kw):
    # value semantics: copies and memory-format changes mean nothing in the IR
    if not cx.node.target.__name__.startswith("copy"):
        return x
    src, shape = rest[0], cx.out_shape()  # copy(dst, src) broadcasts src into dst's shape
    src = cx.value(src, cx.out_dtype())
    return src if tuple(src.shape) == shape else cx.op("expand", [src], {"shape": shape})


@conv("aten._assert_tensor_metadata.default", "aten._assert_scalar.default", "aten._assert_async.msg",
      "aten.sym_constrain_range_for_size.default", "aten.sym_constrain_range.default",
      "aten._assert_async.default")
def _assert(cx, *args, **kw):
    return None  # shape facts are enforced by the runtime's input guards instead


@conv("aten.dropout.default", "aten.feature_dropout.default", "aten.alpha_dropout.default")
def _dropout(cx, x, p=0.5, train=False):
    if train:
        raise Unsupported("dropout in training mode: call model.eval()")
    return x  # only seen in undecomposed graphs; core ATen has already dropped it


@conv("operator.getitem")
def _getitem(cx, xs, i):
    out = xs[i]
    if out is None:
        raise Unsupported(f"result {i} of {cx.node.args[0].target} is not supported (only its first result)")
    return out


# ---------------------------------------------------------------- elementwise

_UNARY = {"neg": "neg", "abs": "abs", "exp": "exp", "log": "log", "sqrt": "sqrt", "rsqrt": "rsqrt",
          "reciprocal": "reciprocal", "tanh": "tanh", "erf": "erf", "sigmoid": "sigmoid",
          "relu": "relu", "silu": "silu", "sin": "sin", "cos": "cos", "floor": "floor",
          "ceil": "ceil", "sign": "sign"}


def _unary(ember_name):
    def f(cx, x):
        dt = cx.out_dtype()
        if ember_name in ("floor", "ceil") and not dt.is_float:
            return x  # rounding an integer is the integer
        return cx.op(ember_name, [cx.cast(x, dt)])  # int inputs of float ops promote first
    return f


for _t, _e in _UNARY.items():
    CONVERTERS[f"aten.{_t}.default"] = _unary(_e)


@conv("aten.gelu.default")
def _gelu(cx, x, approximate="none"):
    return cx.op("gelu", [x], {"approximate": approximate})


@conv("aten.logical_not.default")
def _logical_not(cx, x):
    return cx.op("logical_not", [x])


@conv("aten.bitwise_not.default")
def _bitwise_not(cx, x):
    if x.dtype is not dtypes.bool_:
        raise Unsupported("bitwise_not on integers")
    return cx.op("logical_not", [x])


@conv("aten.clamp.default", "aten.clamp_min.default", "aten.clamp_max.default", "aten.hardtanh.default")
def _clamp(cx, x, lo=None, hi=None):
    name = cx.node.target.__name__
    if name.startswith("clamp_max"):
        lo, hi = None, lo
    if name.startswith("hardtanh"):
        lo, hi = (-1.0 if lo is None else lo), (1.0 if hi is None else hi)
    if any(isinstance(v, (Value, SymExpr)) for v in (lo, hi)):
        return _clamp_tensor(cx, x, lo, hi)
    return cx.op("clamp", [cx.cast(x, cx.out_dtype())], {"min": lo, "max": hi})


@conv("aten.clamp.Tensor", "aten.clamp_min.Tensor", "aten.clamp_max.Tensor")
def _clamp_tensor(cx, x, lo=None, hi=None):
    if cx.node.target.__name__.startswith("clamp_max"):
        lo, hi = None, lo
    dt = cx.out_dtype()
    y = cx.cast(x, dt)
    if lo is not None:
        y = cx.op("maximum", [y, cx.value(lo, dt)])
    if hi is not None:
        y = cx.op("minimum", [y, cx.value(hi, dt)])
    return y


@conv("aten.leaky_relu.default")
def _leaky_relu(cx, x, slope=0.01):
    return cx.op("where", [cx.op("gt", [x, cx.const(0, x.dtype)]), x,
                           cx.op("mul", [x, cx.const(slope, x.dtype)])])


@conv("aten.hardsigmoid.default")
def _hardsigmoid(cx, x):
    # relu6(x + 3) / 6, as torch computes it
    y = cx.op("clamp", [cx.op("add", [x, cx.const(3, x.dtype)])], {"min": 0.0, "max": 6.0})
    return cx.op("div", [y, cx.const(6, x.dtype)])


@conv("aten.hardswish.default")
def _hardswish(cx, x):
    return cx.op("mul", [x, _hardsigmoid(cx, x)])


@conv("aten.elu.default")
def _elu(cx, x, alpha=1.0, scale=1.0, input_scale=1.0):
    c = lambda v: cx.const(v, x.dtype)  # noqa: E731
    neg = cx.op("mul", [cx.op("sub", [cx.op("exp", [cx.op("mul", [x, c(input_scale)])]), c(1)]),
                        c(alpha * scale)])
    return cx.op("where", [cx.op("gt", [x, c(0)]), cx.op("mul", [x, c(scale)]), neg])


_BINARY = {"add": "add", "sub": "sub", "mul": "mul", "maximum": "maximum", "minimum": "minimum",
           "pow": "pow"}


def _binary(ember_name):
    def f(cx, a, b, alpha=1):
        dt = cx.out_dtype()
        if alpha != 1:  # add/sub(a, b, alpha) = a +- alpha * b
            b = cx.op("mul", [cx.value(b, dt), cx.const(alpha, dt)])
        return cx.op(ember_name, [cx.value(a, dt), cx.value(b, dt)])
    return f


for _t, _e in _BINARY.items():
    for _ov in ("Tensor", "Scalar", "default"):
        CONVERTERS[f"aten.{_t}.{_ov}"] = _binary(_e)


@conv("aten.pow.Tensor_Scalar")
def _pow_scalar(cx, x, e):
    dt = cx.out_dtype()
    x = cx.cast(x, dt)
    # common exponents become cheaper exact ops (torch itself special-cases these)
    if e == 1:
        return x
    if e == 2:
        return cx.op("mul", [x, x])
    if e == 0.5 and dt.is_float:
        return cx.op("sqrt", [x])
    if e == -1 and dt.is_float:
        return cx.op("reciprocal", [x])
    return cx.op("pow", [x, cx.value(e, dt)])


@conv("aten.pow.Tensor_Tensor", "aten.pow.Scalar")
def _pow(cx, a, b):
    dt = cx.out_dtype()
    return cx.op("pow", [cx.value(a, dt), cx.value(b, dt)])


@conv("aten.rsub.Tensor", "aten.rsub.Scalar")
def _rsub(cx, a, b, alpha=1):
    return _binary("sub")(cx, b, a if alpha == 1 else _binary("mul")(cx, a, alpha))


@conv("aten.div.Tensor", "aten.div.Scalar", "aten.div.Tensor_mode", "aten.div.Scalar_mode")
def _div(cx, a, b, rounding_mode=None):
    dt = cx.out_dtype()
    a, b = cx.value(a, dt), cx.value(b, dt)
    if rounding_mode is None:
        return cx.op("div", [a, b])   # true division: dt is already float for int inputs
    if rounding_mode == "floor":
        q = cx.op("div", [a, b])      # Ember's integer div is floor division
        return cx.op("floor", [q]) if dt.is_float else q
    if dt.is_float:                   # trunc: round the quotient toward zero
        q = cx.op("div", [a, b])
        return cx.op("mul", [cx.op("sign", [q]), cx.op("floor", [cx.op("abs", [q])])])
    raise Unsupported("integer division with rounding_mode='trunc'")


@conv("aten.remainder.Tensor", "aten.remainder.Scalar")
def _remainder(cx, a, b):
    dt = cx.out_dtype()
    a, b = cx.value(a, dt), cx.value(b, dt)
    if not dt.is_float:
        return cx.op("mod", [a, b])  # Ember's integer mod takes the divisor's sign, like torch
    # float remainder also takes the divisor's sign: a - floor(a / b) * b
    return cx.op("sub", [a, cx.op("mul", [cx.op("floor", [cx.op("div", [a, b])]), b])])


@conv("aten.fmod.Tensor", "aten.fmod.Scalar")
def _fmod(cx, a, b):
    dt = cx.out_dtype()
    if not dt.is_float:
        raise Unsupported("integer fmod")
    return cx.op("mod", [cx.value(a, dt), cx.value(b, dt)])  # Ember's float mod is C fmod


_COMPARE = ("eq", "ne", "lt", "le", "gt", "ge")


def _compare(name):
    def f(cx, a, b):
        dt = cx.result_type(a, b)  # compare in the promoted dtype; the result is bool
        return cx.op(name, [cx.value(a, dt), cx.value(b, dt)])
    return f


for _t in _COMPARE:
    for _ov in ("Tensor", "Scalar"):
        CONVERTERS[f"aten.{_t}.{_ov}"] = _compare(_t)


def _logical(name):
    def f(cx, a, b):
        if not cx.node.target.__name__.startswith("logical") and not (
                a.dtype is dtypes.bool_ and (not isinstance(b, Value) or b.dtype is dtypes.bool_)):
            raise Unsupported("bitwise ops on integers")
        return cx.op(name, [cx.value(a, dtypes.bool_), cx.value(b, dtypes.bool_)])
    return f


for _t in ("and", "or", "xor"):
    CONVERTERS[f"aten.logical_{_t}.default"] = _logical(f"logical_{_t}")
    for _ov in ("Tensor", "Scalar"):
        CONVERTERS[f"aten.bitwise_{_t}.{_ov}"] = _logical(f"logical_{_t}")
        CONVERTERS[f"aten.__{_t}__.{_ov}"] = _logical(f"logical_{_t}")  # undecomposed graphs


@conv("aten.where.self", "aten.where.ScalarSelf", "aten.where.ScalarOther", "aten.where.Scalar")
def _where(cx, c, a, b):
    dt = cx.out_dtype()
    return cx.op("where", [cx.cast(c, dtypes.bool_), cx.value(a, dt), cx.value(b, dt)])


@conv("aten.masked_fill.Scalar", "aten.masked_fill.Tensor")
def _masked_fill(cx, x, mask, value):
    return cx.op("where", [cx.cast(mask, dtypes.bool_), cx.value(value, x.dtype), x])


@conv("aten._to_copy.default", "aten.to.dtype", "aten.to.dtype_layout", "aten.to.device",
      "aten.to.other", "aten.type_as.default")
def _to_copy(cx, x, *args, **kw):
    return cx.cast(x, cx.out_dtype())  # device/layout/memory format have no meaning here


# ---------------------------------------------------------------- reductions

def _axes(x, dim):
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return tuple(range(_rank(x)))  # torch: no dims (or []) reduces all
    dim = dim if isinstance(dim, (list, tuple)) else [dim]
    return tuple(sorted(_axis(d, _rank(x)) for d in dim))


def _reduce(name):
    def f(cx, x, dim=None, keepdim=False, **kw):
        return cx.op(name, [cx.cast(x, cx.out_dtype())], {"axes": _axes(x, dim), "keepdims": keepdim})
    return f


for _t, _e in {"sum": "sum", "mean": "mean", "amax": "max", "amin": "min", "prod": "prod"}.items():
    for _ov in ("dim_IntList", "dim", "default", "dim_int"):
        CONVERTERS[f"aten.{_t}.{_ov}"] = _reduce(_e)
CONVERTERS["aten.max.default"] = _reduce("max")
CONVERTERS["aten.min.default"] = _reduce("min")


@conv("aten.cumsum.default")
def _cumsum(cx, x, dim, dtype=None):
    return cx.op("cumsum", [cx.cast(x, cx.out_dtype())], {"axis": _axis(dim, _rank(x))})


@conv("aten.diff.default")
def _diff(cx, x, n=1, dim=-1, prepend=None, append=None):
    ax = _axis(dim, _rank(x))
    parts = [p for p in (prepend, x, append) if p is not None]
    x = cx.op("concat", parts, {"axis": ax}) if len(parts) > 1 else x
    for _ in range(n):  # each order drops one element: x[1:] - x[:-1]
        length = x.shape[ax]
        hi = cx.op("slice", [x], {"axis": ax, "start": 1, "end": length, "step": 1})
        lo = cx.op("slice", [x], {"axis": ax, "start": 0, "end": length - 1, "step": 1})
        x = cx.op("sub", [hi, lo]) if x.dtype is not dtypes.bool_ else cx.op("logical_xor", [hi, lo])
    return x


@conv("aten.max.dim", "aten.min.dim")
def _max_dim(cx, x, dim, keepdim=False):
    is_max = cx.node.target.__name__.startswith("max")
    ax = _axis(dim, _rank(x))
    vals = cx.op("max" if is_max else "min", [x], {"axes": (ax,), "keepdims": keepdim})
    return [vals, _argmax(cx, x if is_max else cx.op("neg", [x]), dim, keepdim)]


@conv("aten.argmax.default", "aten.argmin.default")
def _argmax(cx, x, dim=None, keepdim=False):
    if cx.node.target.__name__.startswith("argmin"):
        x = cx.op("neg", [x])  # the first minimum is the first maximum of -x
    if dim is None:
        x, dim = cx.op("reshape", [x], {"shape": (prod(x.shape),)}), 0
        if keepdim:
            raise Unsupported("argmax with dim=None and keepdim=True")
    return cx.op("argmax", [x], {"axis": _axis(dim, _rank(x)), "keepdims": keepdim})


@conv("aten.any.dim", "aten.any.dims", "aten.any.default", "aten.all.dim", "aten.all.dims",
      "aten.all.default")
def _any(cx, x, dim=None, keepdim=False):
    # any/all = max/min over 0/1; reduced in f32 so backends need no bool reductions
    f = cx.cast(cx.cast(x, dtypes.bool_), dtypes.f32)
    name = "max" if cx.node.target.__name__.startswith("any") else "min"
    return cx.cast(cx.op(name, [f], {"axes": _axes(x, dim), "keepdims": keepdim}), dtypes.bool_)


@conv("aten.var.correction", "aten.var.dim", "aten.std.correction", "aten.std.dim")
def _var(cx, x, dim=None, *args, correction=None, keepdim=False, unbiased=None):
    if cx.node.target._overloadname == "dim":  # var.dim(x, dim, unbiased=True, keepdim=False)
        unbiased = args[0] if args else (True if unbiased is None else unbiased)
        keepdim = args[1] if len(args) > 1 else keepdim
        correction = 1 if unbiased else 0
    correction = 1 if correction is None else correction
    axes = _axes(x, dim)
    d = cx.op("sub", [x, cx.op("mean", [x], {"axes": axes, "keepdims": True})])
    s = cx.op("sum", [cx.op("mul", [d, d])], {"axes": axes, "keepdims": keepdim})
    n = cx.op("sub", [cx.dim_tensor(prod(x.shape[a] for a in axes), x.dtype), cx.const(correction, x.dtype)])
    v = cx.op("div", [s, n])
    return cx.op("sqrt", [v]) if cx.node.target.__name__.startswith("std") else v


@conv("aten._softmax.default", "aten._safe_softmax.default", "aten.softmax.int")
def _softmax(cx, x, dim, *rest, **kw):
    return cx.op("softmax", [cx.cast(x, cx.out_dtype())], {"axis": _axis(dim, _rank(x))})


@conv("aten._log_softmax.default", "aten.log_softmax.int")
def _log_softmax(cx, x, dim, *rest, **kw):
    return cx.op("log_softmax", [cx.cast(x, cx.out_dtype())], {"axis": _axis(dim, _rank(x))})


@conv("aten.native_layer_norm.default", "aten.layer_norm.default")
def _layer_norm(cx, x, shape, w=None, b=None, eps=1e-5, *rest):
    axis = _rank(x) - len(shape)
    if w is None and b is not None:
        w = cx.op("full", [], {"shape": tuple(b.shape), "value": 1.0, "dtype": x.dtype})
    y = cx.op("layer_norm", [x] + [v for v in (w, b) if v is not None], {"axis": axis, "eps": eps})
    if cx.node.target.__name__.startswith("layer_norm"):
        return y
    # mean and 1/std are results 1 and 2; built here, dropped later when unused
    axes = tuple(range(axis, _rank(x)))
    mean = cx.op("mean", [x], {"axes": axes, "keepdims": True})
    d = cx.op("sub", [x, mean])
    var = cx.op("mean", [cx.op("mul", [d, d])], {"axes": axes, "keepdims": True})
    return [y, mean, cx.op("rsqrt", [cx.op("add", [var, cx.const(eps, x.dtype)])])]


def _batch_norm(cx, x, w, b, mean, var, eps):
    c = x.shape[1]
    ones = lambda v: cx.op("full", [], {"shape": (c,), "value": v, "dtype": x.dtype})  # noqa: E731
    w = ones(1.0) if w is None else w
    b = ones(0.0) if b is None else b
    return [cx.op("batch_norm", [x, mean, var, w, b], {"eps": eps}), None, None]


@conv("aten._native_batch_norm_legit_no_training.default")
def _bn_no_training(cx, x, w, b, mean, var, momentum, eps):
    return _batch_norm(cx, x, w, b, mean, var, eps)


@conv("aten.native_batch_norm.default", "aten._native_batch_norm_legit.default")
def _bn(cx, x, w, b, mean, var, training, momentum, eps):
    if training:
        raise Unsupported("batch norm in training mode: call model.eval() (running stats are needed)")
    return _batch_norm(cx, x, w, b, mean, var, eps)


# ---------------------------------------------------------------- matmul and conv

def _transposed_weight(v: Value):
    """If ``v`` is permute(w, [1, 0]) of a 2-D w, return w (so x @ w.T can be ``linear``)."""
    p = v.producer
    if p is not None and p.op == "permute" and tuple(p.attrs["perm"]) == (1, 0):
        return p.inputs[0]
    return None


@conv("aten.mm.default", "aten.bmm.default", "aten.matmul.default")
def _mm(cx, a, b):
    w = _transposed_weight(b) if _rank(a) == 2 and _rank(b) == 2 else None
    if w is not None:  # linear keeps the intent (and the [out, in] weight layout) for passes
        return cx.op("linear", [a, w])
    return cx.op("matmul", [a, b])


@conv("aten.addmm.default")
def _addmm(cx, bias, a, b, beta=1, alpha=1):
    w = _transposed_weight(b)
    if (w is not None and beta == 1 and alpha == 1 and _rank(bias) == 1
            and bias.shape[0] == w.shape[0] and bias.dtype is a.dtype):
        return cx.op("linear", [a, w, bias])
    return _scaled_add(cx, bias, cx.op("matmul", [a, b]), beta, alpha)


@conv("aten.baddbmm.default")
def _baddbmm(cx, bias, a, b, beta=1, alpha=1):
    return _scaled_add(cx, bias, cx.op("matmul", [a, b]), beta, alpha)


def _scaled_add(cx, bias, prod_, beta, alpha):
    dt = prod_.dtype
    if alpha != 1:
        prod_ = cx.op("mul", [prod_, cx.const(alpha, dt)])
    if beta == 0:
        return prod_
    if beta != 1:
        bias = cx.op("mul", [bias, cx.const(beta, dt)])
    return cx.op("add", [prod_, bias])


@conv("aten.linear.default")
def _linear(cx, x, w, b=None):
    return cx.op("linear", [x, w] + ([b] if b is not None else []))


def _pair(v, n=2):
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return tuple(v * n if len(v) == 1 else v)


@conv("aten.convolution.default")
def _convolution(cx, x, w, b, stride, padding, dilation, transposed, output_padding, groups):
    if transposed:
        raise Unsupported("transposed convolution")
    r = _rank(x)
    if r == 3:  # conv1d: run as conv2d over a height of 1
        x = cx.op("reshape", [x], {"shape": (x.shape[0], x.shape[1], 1, x.shape[2])})
        w = cx.op("reshape", [w], {"shape": (w.shape[0], w.shape[1], 1, w.shape[2])})
        stride, padding, dilation = (1, stride[0]), (0, padding[0]), (1, dilation[0])
    elif r != 4:
        raise Unsupported(f"{r - 2}-D convolution")
    y = cx.op("conv2d", [x, w] + ([b] if b is not None else []),
              {"stride": _pair(stride), "padding": _pair(padding), "dilation": _pair(dilation),
               "groups": groups})
    return cx.op("reshape", [y], {"shape": cx.out_shape()}) if r == 3 else y


def _nchw(cx, x, fn):
    """Pooling ops take NCHW; unbatched CHW input gets a batch of 1 around ``fn``."""
    if _rank(x) == 4:
        return fn(x)
    if _rank(x) != 3:
        raise Unsupported(f"pooling over a rank-{_rank(x)} input")
    y = fn(cx.op("reshape", [x], {"shape": (1,) + tuple(x.shape)}))
    return cx.op("reshape", [y], {"shape": tuple(y.shape[1:])})


@conv("aten.max_pool2d_with_indices.default", "aten.max_pool2d.default")
def _max_pool(cx, x, kernel, stride=(), padding=0, dilation=1, ceil_mode=False):
    k = _pair(kernel)
    attrs = {"kernel": k, "stride": _pair(stride) if stride else k, "padding": _pair(padding),
             "dilation": _pair(dilation), "ceil_mode": ceil_mode}
    y = _nchw(cx, x, lambda v: cx.op("max_pool2d", [v], attrs))
    return [y, None] if "indices" in cx.node.target.__name__ else y


@conv("aten.avg_pool2d.default")
def _avg_pool(cx, x, kernel, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
              divisor_override=None):
    if divisor_override is not None:
        raise Unsupported("avg_pool2d with divisor_override")
    k = _pair(kernel)
    attrs = {"kernel": k, "stride": _pair(stride) if stride else k, "padding": _pair(padding),
             "ceil_mode": ceil_mode, "count_include_pad": count_include_pad}
    return _nchw(cx, x, lambda v: cx.op("avg_pool2d", [v], attrs))


@conv("aten._adaptive_avg_pool2d.default", "aten.adaptive_avg_pool2d.default")
def _adaptive_avg_pool(cx, x, output_size):
    size = tuple(cx.out_shape()[-2:])
    if not all(isinstance(d, int) for d in size):
        raise Unsupported("adaptive pooling to a symbolic size")
    return _nchw(cx, x, lambda v: cx.op("adaptive_avg_pool2d", [v], {"output_size": size}))


@conv("aten.scaled_dot_product_attention.default")
def _sdpa(cx, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    e = q.shape[-1]
    if scale is None:
        if not isinstance(e, int):
            raise Unsupported("attention with a symbolic head size")
        scale = 1.0 / math.sqrt(e)
    if q.shape[-3:-2] != k.shape[-3:-2] and _rank(q) >= 3:
        raise Unsupported("grouped-query attention (enable_gqa)")
    perm = tuple(range(_rank(k) - 2)) + (_rank(k) - 1, _rank(k) - 2)
    s = cx.op("matmul", [cx.op("mul", [q, cx.const(scale, q.dtype)]), cx.op("permute", [k], {"perm": perm})])
    ninf = cx.const(float("-inf"), q.dtype)
    if is_causal:
        n, m = q.shape[-2], k.shape[-2]
        rows = cx.op("reshape", [cx.op("arange", [], {"end": n})], {"shape": (n, 1)})
        cols = cx.op("reshape", [cx.op("arange", [], {"end": m})], {"shape": (1, m)})
        s = cx.op("where", [cx.op("ge", [rows, cols]), s, ninf])
    if attn_mask is not None:
        s = (cx.op("where", [attn_mask, s, ninf]) if attn_mask.dtype is dtypes.bool_
             else cx.op("add", [s, cx.cast(attn_mask, q.dtype)]))
    return cx.op("matmul", [cx.op("softmax", [s], {"axis": -1}), v])


@conv("aten._scaled_dot_product_flash_attention_for_cpu.default")
def _sdpa_cpu(cx, q, k, v, dropout_p=0.0, is_causal=False, attn_mask=None, scale=None):
    return [_sdpa(cx, q, k, v, attn_mask, dropout_p, is_causal, scale), None]


# ---------------------------------------------------------------- shapes and data movement

def _reshape_to(cx, x, shape):
    shape = tuple(shape)
    return x if tuple(x.shape) == shape else cx.op("reshape", [x], {"shape": shape})


@conv("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default", "aten.unsqueeze.default",
      "aten.squeeze.default", "aten.squeeze.dim", "aten.squeeze.dims", "aten.flatten.using_ints",
      "aten.unflatten.int")
def _view(cx, x, *args):
    return _reshape_to(cx, x, cx.out_shape())  # torch resolved -1 and symbolic sizes


@conv("aten.expand.default")
def _expand(cx, x, size, implicit=False):
    shape = cx.out_shape()
    return x if tuple(x.shape) == shape else cx.op("expand", [x], {"shape": shape})


@conv("aten.permute.default")
def _permute(cx, x, dims):
    perm = tuple(_axis(d, _rank(x)) for d in dims)
    return x if perm == tuple(range(len(perm))) else cx.op("permute", [x], {"perm": perm})


@conv("aten.t.default", "aten.transpose.int")
def _transpose(cx, x, d0=0, d1=1):
    if _rank(x) < 2:
        return x
    perm = list(range(_rank(x)))
    a, b = _axis(d0, _rank(x)), _axis(d1, _rank(x))
    perm[a], perm[b] = perm[b], perm[a]
    return _permute(cx, x, perm)


def _norm_index(cx, i, size, clamp=True):
    """A torch start/end index as 0 <= i <= size (negative counts from the end)."""
    if i is None:
        return None
    if isinstance(i, int) and i >= 2**62:  # INT64_MAX means "to the end"
        return size
    if cx.hint(i) < 0:
        i = i + size
    if clamp and isinstance(i, int) and isinstance(size, int):
        i = min(max(i, 0), size)
    elif clamp and isinstance(i, int) and i < 0:
        i = 0
    elif clamp and cx.hint(i) > cx.hint(size):
        i = size  # torch guarded on the same comparison at export
    return i


def _slice_value(cx, x, dim, start, end, step=1, length=None):
    ax = _axis(dim, _rank(x))
    size = x.shape[ax]
    start = _norm_index(cx, 0 if start is None else start, size)
    end = size if end is None else _norm_index(cx, end, size)
    if isinstance(start, int) and isinstance(end, int) and end < start:
        end = start
    if length is not None and not (isinstance(length, SymExpr) and step != 1):
        # torch's own (clamped, simplified) length is the most reliable end
        end = start + (length - 1) * step + 1 if length != 0 else start
    if start == 0 and end == size and step == 1:
        return x
    return cx.op("slice", [x], {"axis": ax, "start": start, "end": end, "step": step})


@conv("aten.slice.Tensor")
def _slice(cx, x, dim=0, start=None, end=None, step=1):
    try:
        length = cx.out_shape()[_axis(dim, _rank(x))]
    except Unsupported:  # e.g. Min(512, seq): fall back to clamping with the example sizes
        length = None
    return _slice_value(cx, x, dim, start, end, step, length)


@conv("aten.select.int")
def _select(cx, x, dim, index):
    ax = _axis(dim, _rank(x))
    i = _norm_index(cx, index, x.shape[ax], clamp=False)
    y = cx.op("slice", [x], {"axis": ax, "start": i, "end": i + 1, "step": 1})
    return cx.op("reshape", [y], {"shape": tuple(x.shape[:ax]) + tuple(x.shape[ax + 1:])})


@conv("aten.cat.default", "aten.concat.default")
def _cat(cx, xs, dim=0):
    dt = cx.out_dtype()
    # legacy torch accepts 1-D empty tensors in cat and skips them
    xs = [cx.cast(x, dt) for x in xs if not (tuple(x.shape) == (0,) and _rank(xs[0]) != 1)]
    if len(xs) == 1:
        return xs[0]
    return cx.op("concat", xs, {"axis": _axis(dim, _rank(xs[0]))})


@conv("aten.stack.default")
def _stack(cx, xs, dim=0):
    ax = _axis(dim, _rank(xs[0]) + 1)
    parts = [cx.op("reshape", [x], {"shape": tuple(x.shape[:ax]) + (1,) + tuple(x.shape[ax:])}) for x in xs]
    return _cat(cx, parts, ax)


@conv("aten.split_with_sizes.default", "aten.split.Tensor", "aten.split_with_sizes_copy.default",
      "aten.split.sizes")
def _split(cx, x, sizes, dim=0):
    ax = _axis(dim, _rank(x))
    lengths = [cx.out_shape(i)[ax] for i in range(len(cx.meta()))]
    out, start = [], 0
    for n in lengths:
        out.append(_slice_value(cx, x, ax, start, start + n, 1, n))
        start = start + n
    return out


@conv("aten.unbind.int")
def _unbind(cx, x, dim=0):
    ax = _axis(dim, _rank(x))
    if not isinstance(x.shape[ax], int):
        raise Unsupported("unbind along a symbolic dim")
    return [_select(cx, x, ax, i) for i in range(x.shape[ax])]


@conv("aten.constant_pad_nd.default")
def _pad(cx, x, pad, value=0):
    # torch lists (before, after) pairs from the last dim backwards; Ember from the first dim
    pads = [0] * (2 * _rank(x))
    for i in range(len(pad) // 2):
        d = _rank(x) - 1 - i
        pads[2 * d], pads[2 * d + 1] = pad[2 * i], pad[2 * i + 1]
    if not all(isinstance(p, int) for p in pads):
        raise Unsupported("padding by a symbolic amount")
    return cx.op("pad", [x], {"pads": tuple(pads), "value": float(value)})


@conv("aten.repeat.default")
def _repeat(cx, x, repeats):
    # interleave a size-r axis before each dim, expand it, then merge: [r0*d0, r1*d1, ...]
    lead = len(repeats) - _rank(x)
    shape = (1,) * lead + tuple(x.shape)
    inter = tuple(v for d in shape for v in (1, d))
    big = tuple(v for r, d in zip(repeats, shape) for v in (r, d))
    y = cx.op("expand", [cx.op("reshape", [x], {"shape": inter})], {"shape": big})
    return cx.op("reshape", [y], {"shape": cx.out_shape()})


@conv("aten.embedding.default")
def _embedding(cx, w, idx, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    return cx.op("embedding", [w, idx])  # padding_idx only matters for gradients


@conv("aten.index_select.default")
def _index_select(cx, x, dim, idx):
    return cx.op("index_select", [x, idx], {"axis": _axis(dim, _rank(x))})


@conv("aten.gather.default")
def _gather(cx, x, dim, idx, sparse_grad=False):
    if tuple(idx.shape) == tuple(cx.out_shape()) and _rank(idx) == _rank(x):
        return cx.op("gather", [x, idx], {"axis": _axis(dim, _rank(x))})
    raise Unsupported("gather with an index rank unlike the input's")


def _nonneg(v: Value) -> bool:
    """True when ``v`` provably holds no negative index (built from arange and shape ops)."""
    while v.producer is not None:
        p = v.producer
        if p.op == "arange":
            return isinstance(p.attrs["start"], SymExpr) or p.attrs["start"] >= 0
        if p.op in ("reshape", "expand", "permute", "cast", "slice"):
            v = p.inputs[0]
        elif p.op == "add" and p.inputs[1].kind == "const" and (p.inputs[1].data >= 0).all():
            v = p.inputs[0]
        else:
            return False
    return v.kind == "const" and v.data is not None and (v.data >= 0).all()


@conv("aten.index.Tensor")
def _index(cx, x, indices):
    """x[i0, i1, ...] (advanced indexing) as one row gather: ``embedding`` on a 2-D view.

    The indexed dims move to the front and flatten to one axis addressed by a linear index;
    the rest flatten to the row. Torch puts the broadcast index dims where the indexed dims
    were when those are adjacent, else in front; a final permute does the same.
    """
    pos = [i for i, t in enumerate(indices) if t is not None]
    idx = [indices[i] for i in pos]
    if any(t.dtype is dtypes.bool_ or t.dtype is dtypes.u8 for t in idx):
        raise Unsupported("boolean mask indexing (data-dependent shape)")
    r = _rank(x)
    rest = [i for i in range(r) if i not in pos]
    xt = _permute(cx, x, pos + rest)
    lin = None
    for p, t in zip(pos, idx):
        t = cx.cast(t, dtypes.i64)
        size = cx.dim_tensor(x.shape[p])
        if not _nonneg(t):  # negative indices count from the end
            t = cx.op("where", [cx.op("lt", [t, cx.const(0, dtypes.i64)]), cx.op("add", [t, size]), t])
        lin = t if lin is None else cx.op("add", [cx.op("mul", [lin, size]), t])
    rest_shape = tuple(x.shape[i] for i in rest)
    flat = cx.op("reshape", [xt], {"shape": (prod(x.shape[p] for p in pos), prod(rest_shape))})
    y = cx.op("embedding", [flat, lin])
    k = _rank(lin)
    y = cx.op("reshape", [y], {"shape": tuple(lin.shape) + rest_shape})
    adjacent = pos == list(range(pos[0], pos[-1] + 1))
    if adjacent and pos[0] > 0:
        perm = [k + j for j in range(pos[0])] + list(range(k)) + [k + j for j in range(pos[0], len(rest))]
        y = _permute(cx, y, perm)
    return y


# ---------------------------------------------------------------- creation

def _full(cx, value, shape=None):
    dt, shape = cx.out_dtype(), cx.out_shape() if shape is None else shape
    if isinstance(value, Value):
        raise Unsupported("fill value from a tensor")
    if isinstance(value, SymExpr):
        return cx.op("expand", [cx.dim_tensor(value, dt)], {"shape": shape})
    if shape == ():
        return cx.const(value, dt)
    if not dt.is_float and abs(value) > 2**53:  # the attr is a float: keep big ints exact
        return cx.op("expand", [cx.const(value, dt)], {"shape": shape})
    return cx.op("full", [], {"shape": shape, "value": float(value), "dtype": dt})


@conv("aten.full.default")
def _full_op(cx, size, value, **kw):
    return _full(cx, value)


@conv("aten.full_like.default")
def _full_like(cx, x, value, **kw):
    return _full(cx, value)


@conv("aten.zeros.default", "aten.zeros_like.default", "aten.empty.memory_format",
      "aten.empty_like.default", "aten.empty_strided.default", "aten.new_zeros.default",
      "aten.new_empty.default")
def _zeros(cx, *args, **kw):
    return _full(cx, 0)  # "empty" gets zeros: deterministic, and never read before written


@conv("aten.ones.default", "aten.ones_like.default", "aten.new_ones.default")
def _ones(cx, *args, **kw):
    return _full(cx, 1)


@conv("aten.new_full.default")
def _new_full(cx, x, size, value, **kw):
    return _full(cx, value)


@conv("aten.scalar_tensor.default")
def _scalar_tensor(cx, value, **kw):
    return cx.value(value, cx.out_dtype())


@conv("aten.arange.default", "aten.arange.start", "aten.arange.start_step")
def _arange(cx, *args, **kw):
    start, end, step = (0, args[0], 1) if len(args) == 1 else (tuple(args) + (1,))[:3]
    if any(isinstance(v, float) and not v.is_integer() for v in (start, end, step)):
        raise Unsupported("arange with fractional bounds")
    start, end, step = [v if isinstance(v, SymExpr) else int(v) for v in (start, end, step)]
    if not isinstance(step, int) or step < 1:
        raise Unsupported("arange with a non-positive or symbolic step")
    y = cx.op("arange", [], {"start": start, "end": end, "step": step, "dtype": dtypes.i64})
    return cx.cast(y, cx.out_dtype())


@conv("aten.lift_fresh.default")
def _lift(cx, x):
    return x


# ---------------------------------------------------------------- ops the model families need

@conv("aten.native_group_norm.default")
def _group_norm(cx, x, w, b, n, c, hw, groups, eps):
    """Group norm (wav2vec2 / HuBERT feature encoders, diffusion U-Nets): layer_norm over
    [N, G, C/G * spatial], then the per-channel affine."""
    shape = tuple(x.shape)
    c = shape[1]
    if not isinstance(c, int):
        raise Unsupported("group norm over a symbolic channel count")
    rest = prod(shape[2:]) if len(shape) > 2 else 1
    y = cx.op("reshape", [x], {"shape": (shape[0], groups, (c // groups) * rest)})
    y = cx.op("layer_norm", [y], {"axis": 2, "eps": eps})
    y = cx.op("reshape", [y], {"shape": shape})
    per_channel = (c,) + (1,) * (len(shape) - 2)
    if w is not None:
        y = cx.op("mul", [y, cx.op("reshape", [w], {"shape": per_channel})])
    if b is not None:
        y = cx.op("add", [y, cx.op("reshape", [b], {"shape": per_channel})])
    return [y, None, None]


@conv("aten.linalg_vector_norm.default")
def _vector_norm(cx, x, ord=2, dim=None, keepdim=False, dtype=None):
    """p-norms (ConvNeXt-V2's global response norm, normalize()): sum(|x|^p)^(1/p)."""
    dt = cx.out_dtype()
    x = cx.cast(x, dt)
    axes = _axes(x, dim)
    red = {"axes": axes, "keepdims": keepdim}
    if ord == float("inf"):
        return cx.op("max", [cx.op("abs", [x])], red)
    if ord == float("-inf"):
        return cx.op("min", [cx.op("abs", [x])], red)
    if ord == 2:
        return cx.op("sqrt", [cx.op("sum", [cx.op("mul", [x, x])], red)])
    if ord == 1:
        return cx.op("sum", [cx.op("abs", [x])], red)
    if ord == 0 or not isinstance(ord, (int, float)):
        raise Unsupported(f"vector norm of order {ord}")
    s = cx.op("sum", [cx.op("pow", [cx.op("abs", [x]), cx.const(float(ord), dt)])], red)
    return cx.op("pow", [s, cx.const(1.0 / ord, dt)])


@conv("aten.as_strided.default")
def _as_strided(cx, x, size, stride, offset=0):
    """Only the case decompositions produce: a contiguous view of a contiguous tensor."""
    src = cx.node.args[0].meta.get("val")
    if not (isinstance(src, torch.Tensor) and src.is_contiguous() and (offset or 0) == 0
            and src.storage_offset() == 0):
        raise Unsupported("as_strided over a non-contiguous tensor or with an offset")
    out = cx.out_shape()
    want, run = [], 1
    for d in reversed(out):
        want.append(run)
        run = run * d
    want = want[::-1]
    for d, s, w in zip(out, stride, want):
        if d != 1 and cx.dim(s) != w:
            raise Unsupported("as_strided with non-contiguous strides")
    return _reshape_to(cx, x, out)


@conv("aten.slice_scatter.default")
def _slice_scatter(cx, x, src, dim=0, start=None, end=None, step=1):
    """x with x[start:end] along ``dim`` replaced by ``src`` (step 1): a concat of three parts."""
    if step != 1:
        raise Unsupported("slice_scatter with a step")
    ax = _axis(dim, _rank(x))
    size = x.shape[ax]
    start = _norm_index(cx, 0 if start is None else start, size)
    end = size if end is None else _norm_index(cx, end, size)
    parts = []
    if start != 0:
        parts.append(cx.op("slice", [x], {"axis": ax, "start": 0, "end": start, "step": 1}))
    parts.append(cx.cast(src, x.dtype))
    if end != size:
        parts.append(cx.op("slice", [x], {"axis": ax, "start": end, "end": size, "step": 1}))
    return parts[0] if len(parts) == 1 else cx.op("concat", parts, {"axis": ax})


def _src_index(cx, n_in, n_out, scale, align, cubic=False):
    """Source coordinate per output position, as torch's area_pixel_compute_source_index."""
    f = dtypes.f32
    pos = cx.cast(cx.op("arange", [], {"start": 0, "end": n_out, "step": 1, "dtype": dtypes.i64}), f)
    if align:
        if isinstance(n_out, int) and n_out <= 1:
            return cx.op("mul", [pos, cx.const(0.0, f)])
        r = cx.op("div", [cx.value(n_in - 1, f), cx.value(n_out - 1, f)])
        return cx.op("mul", [pos, r])
    r = cx.const(float(scale), f) if scale is not None else \
        cx.op("div", [cx.value(n_in, f), cx.value(n_out, f)])
    src = cx.op("sub", [cx.op("mul", [cx.op("add", [pos, cx.const(0.5, f)]), r]), cx.const(0.5, f)])
    return src if cubic else cx.op("maximum", [src, cx.const(0.0, f)])


def _resize_axis(cx, x, ax, n_out, mode, align, scale):
    n_in = x.shape[ax]
    if n_in == n_out and (mode == "nearest" or scale is None or scale == 1.0):
        return x
    f, i64 = dtypes.f32, dtypes.i64
    last = cx.value(n_in - 1, i64)
    if mode == "nearest":
        pos = cx.cast(cx.op("arange", [], {"start": 0, "end": n_out, "step": 1, "dtype": i64}), f)
        r = cx.const(float(scale), f) if scale is not None else \
            cx.op("div", [cx.value(n_in, f), cx.value(n_out, f)])
        idx = cx.op("minimum", [cx.cast(cx.op("floor", [cx.op("mul", [pos, r])]), i64), last])
        return cx.op("index_select", [x, idx], {"axis": ax})
    src = _src_index(cx, n_in, n_out, scale, align)
    i0f = cx.op("floor", [src])
    i0 = cx.op("minimum", [cx.cast(i0f, i64), last])
    i1 = cx.op("minimum", [cx.op("add", [i0, cx.const(1, i64)]), last])
    lam = cx.op("sub", [src, i0f])
    shape = (n_out,) + (1,) * (_rank(x) - 1 - ax)
    lam = cx.cast(cx.op("reshape", [lam], {"shape": shape}), x.dtype)
    x0 = cx.op("index_select", [x, i0], {"axis": ax})
    x1 = cx.op("index_select", [x, i1], {"axis": ax})
    one = cx.const(1.0, x.dtype)
    return cx.op("add", [cx.op("mul", [x0, cx.op("sub", [one, lam])]), cx.op("mul", [x1, lam])])


def _upsample(mode):
    def f(cx, x, output_size=None, *rest):
        # .vec: (x, output_size, [align_corners,] scale_factors); .default: (x, output_size,
        # [align_corners,] scales_h, scales_w)
        rest = list(rest)
        align = rest.pop(0) if mode == "linear" and rest else False
        scales = rest[0] if len(rest) == 1 else (rest if rest else None)
        out = cx.out_shape()
        spatial = len(out) - 2
        if isinstance(scales, (int, float)):
            scales = [scales]
        if isinstance(scales, (list, tuple)) and any(s is None for s in scales):
            scales = None
        # torch uses 1/scale_factor when a scale is given, else in/out
        inv = [None] * spatial if not scales else [1.0 / s for s in scales]
        y = x
        for k in range(spatial):
            y = _resize_axis(cx, y, 2 + k, out[2 + k], mode, align, inv[k])
        return y
    return f


for _n, _m in (("upsample_nearest1d", "nearest"), ("upsample_nearest2d", "nearest"),
               ("upsample_linear1d", "linear"), ("upsample_bilinear2d", "linear")):
    for _ov in ("vec", "default"):
        CONVERTERS[f"aten.{_n}.{_ov}"] = _upsample(_m)


@conv("operator.truediv")
def _sym_truediv(cx, a, b):
    """size / size as a float (torch's decompositions compute resize scales so): a 0-d f64."""
    if not any(isinstance(v, (SymExpr, Value)) for v in (a, b)):
        return a / b
    f = dtypes.f64
    return cx.op("div", [cx.value(a, f), cx.value(b, f)])


@conv("aten.log1p.default")
def _log1p(cx, x):
    dt = cx.out_dtype()
    return cx.op("log", [cx.op("add", [cx.cast(x, dt), cx.const(1.0, dt)])])


@conv("aten.expm1.default")
def _expm1(cx, x):
    dt = cx.out_dtype()
    return cx.op("sub", [cx.op("exp", [cx.cast(x, dt)]), cx.const(1.0, dt)])


@conv("aten.trunc.default")
def _trunc(cx, x):
    if not x.dtype.is_float:
        return x
    return cx.op("mul", [cx.op("sign", [x]), cx.op("floor", [cx.op("abs", [x])])])


def _exists(name: str) -> bool:
    if not name.startswith("aten."):
        return True
    _, op, overload = name.split(".")
    packet = getattr(torch.ops.aten, op, None)
    return packet is not None and overload in packet.overloads()


# the loops above try every overload spelling; keep the ones this torch actually has
CONVERTERS = {k: v for k, v in CONVERTERS.items() if _exists(k)}

__all__ = ["CONVERTERS", "ember_dtype"]
