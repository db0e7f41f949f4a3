"""Quantization ops (int8 / uint8 tensors with scales and zero points); see ember/quant/.

Conventions (those of ONNX): a quantized value ``q`` stands for ``(q - zero_point) * scale``.
Rounding is half to even, and every conversion to 8 bits saturates to the type's range.

* ``quantize_linear(x, scale, zero_point)``: ONNX QuantizeLinear (per tensor, or per axis
  when ``scale`` is 1-D); the output dtype is the zero point's (u8 or i8).
* ``dequantize_linear(q, scale, zero_point)``: ONNX DequantizeLinear -> f32.
* ``dynamic_quantize(x)``: activations quantized at run time, per tensor or per row
  (``per_row``: one scale for each index of the leading dims). u8 is ONNX
  DynamicQuantizeLinear's asymmetric scheme; i8 is symmetric (zero point 0, range +-127).
  Outputs (q, scale, zero_point); scale and zero_point are [] or x.shape[:-1] + [1].
  ``reduce_range`` (u8 only): 7-bit codes in [0, 127] (scale = range / 127), what lets the
  int8 GEMM use AVX2's u8 x s8 ``vpmaddubsw`` with no possible saturation (FBGEMM's AVX2 mode).
* ``matmul_integer(a, b, [a_zp, b_zp])``: ONNX MatMulInteger, exact int32 result.
* ``quant_linear(xq, x_scale, x_zp, wq[N, K] i8, w_scale[N], [bias[N]])`` -> f32:
  ``float(sum_k (xq - x_zp) * wq[n, k]) * (x_scale * w_scale[n]) + bias[n]``; the integer sum is
  exact (int32 accumulation, no saturation).
* ``quant_conv2d(xq, x_scale, x_zp, wq[O, C/g, kh, kw] i8, w_scale[O], [bias[O]])`` -> f32: the
  same for conv2d (padding stands for the real value 0, i.e. the zero point).
"""
from __future__ import annotations

import numpy as np

from ... import errors
from .. import dtypes
from ..graph import TensorType
from .nn import _conv2d_infer, conv2d_ref
from .registry import Attr, norm_axis, register

INT8 = (dtypes.i8, dtypes.u8)


def qrange(dt) -> tuple[int, int]:
    info = np.iinfo(np.dtype(dt.np_name if isinstance(dt, dtypes.DType) else dt))
    return int(info.min), int(info.max)


def _check_q(op, t, what="input"):
    if t.dtype not in INT8:
        raise errors.DTypeError(f"{op}: {what} must be u8 or i8, got {t.dtype}")


def _check_scale(op, x, s, axis, what="scale"):
    if s.dtype is not dtypes.f32:
        raise errors.DTypeError(f"{op}: {what} must be f32, got {s.dtype}")
    if s.rank == 0 or (s.rank == 1 and s.shape[0] == 1):
        return
    if s.rank != 1:
        raise errors.ShapeError(f"{op}: {what} must be a scalar or 1-D, got {s}")
    ax = norm_axis(axis, x.rank, op)
    if s.shape[0] != x.shape[ax]:
        raise errors.ShapeError(f"{op}: {what} has {s.shape[0]} entries but axis {ax} of the input "
                                f"has {x.shape[ax]}")


def _per_axis(p, x, axis):
    """A scale or zero point broadcast against ``x`` (scalar, or 1-D along ``axis``)."""
    if p.ndim == 0 or p.size == 1:
        return p.reshape(())
    shape = [1] * x.ndim
    shape[axis % x.ndim] = -1
    return p.reshape(shape)


# -- quantize / dequantize (ONNX semantics)

def quantize_ref(x, scale, zp, axis=1):
    """round_half_even(x / scale) + zp, saturated; computed in float32 like ONNX."""
    s = _per_axis(np.asarray(scale, np.float32), x, axis)
    z = _per_axis(np.asarray(zp), x, axis)
    lo, hi = qrange(z.dtype)
    y = np.rint(x.astype(np.float32) / s) + z.astype(np.float32)
    return np.clip(y, lo, hi).astype(z.dtype)


def dequantize_ref(q, scale, zp=None, axis=1):
    s = _per_axis(np.asarray(scale, np.float32), q, axis)
    z = _per_axis(np.asarray(zp if zp is not None else 0), q, axis)
    return ((q.astype(np.int32) - z.astype(np.int32)).astype(np.float32) * s).astype(np.float32)


def _q_infer(ts, a):
    x, s, z = ts
    if not x.dtype.is_float:
        raise errors.DTypeError(f"quantize_linear: input must be float, got {x.dtype}")
    _check_scale("quantize_linear", x, s, a["axis"])
    _check_q("quantize_linear", z, "zero point")
    if tuple(z.shape) != tuple(s.shape):
        raise errors.ShapeError("quantize_linear: zero point and scale must have one shape")
    return [TensorType(z.dtype, x.shape)]


register("quantize_linear", _q_infer, lambda xs, a: quantize_ref(*xs, axis=a["axis"]),
         attrs={"axis": Attr("int", 1)}, arity=(3, 3), category="quant",
         doc="ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point)")


def _dq_infer(ts, a):
    q, s = ts[0], ts[1]
    _check_q("dequantize_linear", q)
    _check_scale("dequantize_linear", q, s, a["axis"])
    if len(ts) == 3 and (ts[2].dtype is not q.dtype or tuple(ts[2].shape) != tuple(s.shape)):
        raise errors.ShapeError("dequantize_linear: zero point must match the input's dtype "
                                "and the scale's shape")
    return [TensorType(dtypes.f32, q.shape)]


register("dequantize_linear", _dq_infer,
         lambda xs, a: dequantize_ref(xs[0], xs[1], xs[2] if len(xs) > 2 else None, a["axis"]),
         attrs={"axis": Attr("int", 1)}, arity=(2, 3), category="quant",
         doc="ONNX DequantizeLinear: (q - zero_point) * scale in f32")


# -- dynamic (run-time) activation quantization

def dynamic_qmax(dt, reduce_range: bool = False) -> int:
    """The largest code of dynamic_quantize's u8 scheme: 255, or 127 with ``reduce_range``."""
    return 127 if reduce_range and dt is dtypes.u8 else qrange(dt)[1]


def dynamic_params(x, per_row: bool, dt, reduce_range: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero_point) for ``x``, per tensor or per row (over the last axis)."""
    x = x.astype(np.float32)
    axes = (x.ndim - 1,) if per_row else tuple(range(x.ndim))
    keep = per_row
    if dt is dtypes.u8:
        qmax = dynamic_qmax(dt, reduce_range)
        lo = np.minimum(np.min(x, axis=axes, keepdims=keep), np.float32(0))
        hi = np.maximum(np.max(x, axis=axes, keepdims=keep), np.float32(0))
        scale = ((hi - lo) * np.float32(1 / qmax)).astype(np.float32)
        scale = np.where(scale == 0, np.float32(1), scale).astype(np.float32)
        inv = (np.float32(1) / scale).astype(np.float32)
        zp = np.clip(np.rint(np.clip(-(lo * inv), 0, qmax)), 0, qmax).astype(np.uint8)
    else:
        amax = np.max(np.abs(x), axis=axes, keepdims=keep)
        scale = (amax * np.float32(1 / 127)).astype(np.float32)
        scale = np.where(scale == 0, np.float32(1), scale).astype(np.float32)
        zp = np.zeros(scale.shape, np.int8)
    return np.asarray(scale, np.float32), np.asarray(zp)


def _dyn_ref(xs, a):
    x = xs[0]
    dt, rr = a["dtype"], a["reduce_range"]
    scale, zp = dynamic_params(x, a["per_row"], dt, rr)
    lo, hi = qrange(dt)[0], dynamic_qmax(dt, rr)
    inv = (np.float32(1) / scale).astype(np.float32)
    y = np.clip(np.rint(x.astype(np.float32) * inv), lo - zp.astype(np.float32), hi - zp.astype(np.float32))
    return [(y + zp.astype(np.float32)).astype(dt.np), scale, zp]


def _dyn_infer(ts, a):
    x = ts[0]
    if x.dtype is not dtypes.f32 or x.rank < 1:
        raise errors.DTypeError(f"dynamic_quantize: input must be f32 of rank >= 1, got {x}")
    if a["dtype"] not in INT8:
        raise errors.DTypeError(f"dynamic_quantize: dtype must be u8 or i8, got {a['dtype']}")
    if a["reduce_range"] and a["dtype"] is not dtypes.u8:
        raise errors.DTypeError("dynamic_quantize: reduce_range applies to the u8 scheme only")
    pshape = tuple(x.shape[:-1]) + (1,) if a["per_row"] else ()
    return [TensorType(a["dtype"], x.shape), TensorType(dtypes.f32, pshape), TensorType(a["dtype"], pshape)]


register("dynamic_quantize", _dyn_infer, _dyn_ref,
         attrs={"per_row": Attr("bool", True), "dtype": Attr("dtype", dtypes.u8),
                "reduce_range": Attr("bool", False)}, arity=(1, 1),
         category="quant",
         doc="run-time quantization -> (q, scale, zero_point); u8: scale = (max(x,0) - min(x,0)) * f32(1/255), "
             "zp = round(-min * (1/scale)); i8: scale = max|x| * f32(1/127), zp = 0; scale 0 becomes 1; "
             "q = clamp(round(x * (1/scale)), lo - zp, hi - zp) + zp; reduce_range: u8 codes in [0, 127] "
             "(255 above becomes 127)")


# -- integer matmul

def int_matmul(a, b) -> np.ndarray:
    """Exact integer matmul (int64), through float64 BLAS when the sums fit 2**53."""
    a64, b64 = a.astype(np.int64), b.astype(np.int64)
    k = a.shape[-1]
    bound = k * max(int(np.abs(a64).max(initial=0)), 1) * max(int(np.abs(b64).max(initial=0)), 1)
    if bound < 2 ** 53:
        return np.rint(np.matmul(a64.astype(np.float64), b64.astype(np.float64))).astype(np.int64)
    return np.matmul(a64, b64)


def _mmi_infer(ts, a):
    x, y = ts[0], ts[1]
    _check_q("matmul_integer", x, "A")
    _check_q("matmul_integer", y, "B")
    if x.rank < 2 or y.rank < 2 or x.shape[-1] != y.shape[-2]:
        raise errors.ShapeError(f"matmul_integer: shapes {x} and {y} do not multiply")
    from .registry import broadcast_shapes
    batch = broadcast_shapes(tuple(x.shape[:-2]), tuple(y.shape[:-2]))
    for t, ref in zip(ts[2:], (x, y)):
        if t.dtype is not ref.dtype or t.rank > 1:
            raise errors.ShapeError("matmul_integer: zero points must be scalars (or 1-D) of the operand's dtype")
    return [TensorType(dtypes.i32, batch + (x.shape[-2], y.shape[-1]))]


def _mmi_ref(xs, a):
    x, y = xs[0].astype(np.int64), xs[1].astype(np.int64)
    if len(xs) > 2:
        za = xs[2].astype(np.int64)
        x = x - (za.reshape(-1, 1) if za.ndim == 1 and za.size > 1 else za.reshape(()))
    if len(xs) > 3:
        y = y - xs[3].astype(np.int64).reshape(() if xs[3].size == 1 else (-1,))
    return int_matmul(x, y).astype(np.int32)


register("matmul_integer", _mmi_infer, _mmi_ref, arity=(2, 4), category="quant",
         doc="ONNX MatMulInteger: (a - a_zp) @ (b - b_zp) with exact int32 accumulation")


def _ql_check(op, ts, wrank):
    xq, xs, xz, wq, ws = ts[:5]
    _check_q(op, xq)
    if wq.dtype is not dtypes.i8 or wq.rank != wrank:
        raise errors.DTypeError(f"{op}: weight must be i8 of rank {wrank}, got {wq}")
    if xs.dtype is not dtypes.f32 or ws.dtype is not dtypes.f32:
        raise errors.DTypeError(f"{op}: scales must be f32")
    if xz.dtype is not xq.dtype or tuple(xz.shape) != tuple(xs.shape):
        raise errors.ShapeError(f"{op}: input zero point must have the input's dtype and the scale's shape")
    n = wq.shape[0]
    if ws.rank > 1 or (ws.rank == 1 and ws.shape[0] not in (1, n)):
        raise errors.ShapeError(f"{op}: weight scale must be [] or [{n}], got {ws}")
    if len(ts) == 6 and (ts[5].dtype is not dtypes.f32 or tuple(ts[5].shape) != (n,)):
        raise errors.ShapeError(f"{op}: bias must be f32[{n}]")


def _ql_infer(ts, a):
    _ql_check("quant_linear", ts, 2)
    xq, xs, wq = ts[0], ts[1], ts[3]
    if xq.rank < 1 or xq.shape[-1] != wq.shape[1]:
        raise errors.ShapeError(f"quant_linear: input {xq} does not match weight {wq} ([out, in])")
    if xs.rank != 0 and tuple(xs.shape) != tuple(xq.shape[:-1]) + (1,):
        raise errors.ShapeError(f"quant_linear: input scale must be [] or [..., 1] per row, got {xs}")
    return [TensorType(dtypes.f32, tuple(xq.shape[:-1]) + (wq.shape[0],))]


def _ql_ref(xs_, a):
    xq, xs, xz, wq, ws = xs_[:5]
    acc = int_matmul(xq.astype(np.int64) - xz.astype(np.int64), wq.T)
    y = acc.astype(np.float32) * (xs.astype(np.float32) * ws.astype(np.float32))
    if len(xs_) == 6:
        y = y + xs_[5]
    return y.astype(np.float32)


register("quant_linear", _ql_infer, _ql_ref, arity=(5, 6), category="quant",
         doc="int8 linear: float(sum_k (xq - x_zp) * wq[n, k]) * (x_scale * w_scale[n]) + bias[n]")


def _qc_infer(ts, a):
    _ql_check("quant_conv2d", ts, 4)
    if ts[1].rank != 0:
        raise errors.ShapeError("quant_conv2d: the input scale must be a scalar (per tensor)")
    xq, wq = ts[0], ts[3]
    out = _conv2d_infer([TensorType(dtypes.f32, xq.shape), TensorType(dtypes.f32, wq.shape)], a)[0]
    return [out]


def _qc_ref(xs_, a):
    xq, xs, xz, wq, ws = xs_[:5]
    x = (xq.astype(np.int64) - xz.astype(np.int64)).astype(np.float64)
    acc = conv2d_ref(x, wq.astype(np.float64), stride=a["stride"], padding=a["padding"],
                     dilation=a["dilation"], groups=a["groups"])
    acc = np.rint(acc).astype(np.int64)  # exact: integer sums far below 2**53
    scale = (xs.astype(np.float32) * ws.astype(np.float32)).reshape(-1, 1, 1) if ws.ndim else xs * ws
    y = acc.astype(np.float32) * np.asarray(scale, np.float32)
    if len(xs_) == 6:
        y = y + xs_[5].reshape(-1, 1, 1)
    return y.astype(np.float32)


register("quant_conv2d", _qc_infer, _qc_ref,
         attrs={"stride": Attr("ints", (1, 1)), "padding": Attr("ints", (0, 0)),
                "dilation": Attr("ints", (1, 1)), "groups": Attr("int", 1)},
         arity=(5, 6), category="quant",
         doc="int8 conv2d: float(sum (xq - x_zp) * wq) * (x_scale * w_scale[o]) + bias[o]")
