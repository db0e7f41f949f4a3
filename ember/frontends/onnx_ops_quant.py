"""ONNX converters for already-quantized models: QDQ pairs and the integer operators.

    QuantizeLinear / DequantizeLinear   (per tensor, per axis, blocked; 8- and 16-bit ints)
    DynamicQuantizeLinear, MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv

The common int8 cases map onto the IR's quant ops (ember/ir/ops/quant.py), whose lowerings
are the fast integer kernels. What those ops do not cover (16-bit types, blocked scales, f16
scales, weight zero points, the requantizing epilogues of the QLinear ops) is composed from
elementwise ops here, following the ONNX reference implementation step by step: the suite
compares integer outputs exactly, so a rounding tie must fall the way the reference's does
(e.g. QLinearMatMul rescales in float64, because numpy promotes int32 * float32 to float64).
"""
from __future__ import annotations

import numpy as np

from ..ir import dtypes
from .onnx import Unsupported, onnx_dtype
from .onnx_ops import CONVERTERS, _axis, _rank, _reshape, conv

F32, F64, I32 = dtypes.f32, dtypes.f64, dtypes.i32
INT8 = (dtypes.i8, dtypes.u8)


def _int_range(dt) -> tuple[int, int]:
    if dt.is_float or dt is dtypes.bool_:
        raise Unsupported(f"quantization to {dt} (only integer types)")
    info = np.iinfo(dt.np)
    return int(info.min), int(info.max)


def _is_scalar(v) -> bool:
    return _rank(v) == 0 or (_rank(v) == 1 and v.shape[0] == 1)


def _param(cx, p, x, axis: int, block: int):
    """A scale or zero point shaped to broadcast against ``x`` (ONNX's reshape_input):
    a scalar, a 1-D vector along ``axis``, or a blocked tensor repeated ``block`` times
    along ``axis`` (the last block may be cut short)."""
    if _is_scalar(p):
        return _reshape(cx, p, ())
    if not block:
        if _rank(p) != 1:
            raise Unsupported(f"a {_rank(p)}-D scale or zero point without block_size")
        shape = [1] * _rank(x)
        shape[axis] = p.shape[0]
        return _reshape(cx, p, shape)
    if _rank(p) != _rank(x):
        raise Unsupported("blocked quantization with a scale whose rank differs from the input's")
    nb, d = p.shape[axis], x.shape[axis]
    split = list(p.shape[:axis + 1]) + [1] + list(p.shape[axis + 1:])
    big = list(p.shape[:axis + 1]) + [block] + list(p.shape[axis + 1:])
    merged = list(p.shape[:axis]) + [nb * block] + list(p.shape[axis + 1:])
    y = _reshape(cx, cx.op("expand", [_reshape(cx, p, split)], {"shape": tuple(big)}), merged)
    if nb * block != d:
        y = cx.op("slice", [y], {"axis": axis, "start": 0, "end": d, "step": 1})
    return y


def _round_even(cx, x):
    """Round half to even (numpy's rint) on a float tensor: floor(x + 0.5), then one less
    where that rounded a tie up to an odd number."""
    half, one, two = cx.const(0.5, x.dtype), cx.const(1.0, x.dtype), cx.const(2.0, x.dtype)
    f = cx.op("floor", [cx.op("add", [x, half])])
    tie = cx.op("eq", [cx.op("sub", [f, x]), half])
    odd = cx.op("ne", [cx.op("mod", [f, two]), cx.const(0.0, x.dtype)])
    return cx.op("where", [cx.op("logical_and", [tie, odd]), cx.op("sub", [f, one]), f])


def _saturate(cx, v, dt):
    """``v`` (float, unrounded) clipped to ``dt``'s range, rounded half to even, cast to ``dt``.
    Clipping first is the same as rounding first since the bounds are integers."""
    lo, hi = _int_range(dt)
    return cx.cast(_round_even(cx, cx.op("clamp", [v], {"min": float(lo), "max": float(hi)})), dt)


def _quant_axis(x, s, a) -> int:
    """The quantization axis; the default (1) means nothing for a per-tensor scale, even on a
    rank-1 input, so it is only checked when the scale is per axis or blocked."""
    ax = a.get("axis", 1)
    return 0 if _is_scalar(s) and not -_rank(x) <= ax < _rank(x) else _axis(ax, _rank(x))


def _ir_params_ok(x, s, z, axis) -> bool:
    """Whether the IR's quantize/dequantize ops take this scale and zero point as they are:
    a scalar or a vector along ``axis``, and a zero point of the scale's shape."""
    ok = _rank(s) == 0 or (_rank(s) == 1 and s.shape[0] in (1, x.shape[axis]))
    return ok and (z is None or tuple(z.shape) == tuple(s.shape))


def _zero_point(cx, z, like_scale, dt):
    return z if z is not None else cx.const_array(np.zeros(like_scale.shape, dt.np), dt)


def _common_float(a, b):
    return a.dtype if a.dtype is b.dtype else F32


# ---------------------------------------------------------------- QDQ

@conv("QuantizeLinear")
def _quantize_linear(cx, ins, a):
    x, s, z = ins[0], ins[1], ins[2]
    if a.get("precision"):
        raise Unsupported("QuantizeLinear's precision attribute")
    if z is not None:
        dt = z.dtype
    else:
        dt = onnx_dtype(a["output_dtype"]) if a.get("output_dtype") else dtypes.u8
    _int_range(dt)  # integer targets only
    axis, block = _quant_axis(x, s, a), a.get("block_size", 0)
    per_axis_ok = _ir_params_ok(x, s, z, axis)
    if dt in INT8 and x.dtype is F32 and s.dtype is F32 and not block and per_axis_ok:
        return cx.op("quantize_linear", [x, s, _zero_point(cx, z, s, dt)], {"axis": axis})
    # general form: rint(x / scale) + zero_point, saturated (ONNX divides in x's type)
    sb = _param(cx, s, x, axis, block)
    ft = _common_float(x, s)
    v = cx.cast(cx.op("div", [cx.cast(x, ft), cx.cast(sb, ft)]), F32)
    v = _round_even(cx, v)
    if z is not None:
        v = cx.op("add", [v, cx.cast(_param(cx, z, x, axis, block), F32)])
    return _saturate(cx, v, dt)


@conv("DequantizeLinear")
def _dequantize_linear(cx, ins, a):
    x, s, z = ins[0], ins[1], ins[2]
    _int_range(x.dtype)
    out_dt = onnx_dtype(a["output_dtype"]) if a.get("output_dtype") else s.dtype
    axis, block = _quant_axis(x, s, a), a.get("block_size", 0)
    per_axis_ok = _ir_params_ok(x, s, z, axis)
    if x.dtype in INT8 and s.dtype is F32 and not block and per_axis_ok:
        y = cx.op("dequantize_linear", [x, s] + ([z] if z is not None else []), {"axis": axis})
        return cx.cast(y, out_dt)
    # general form, as the reference: (float32(x) - zero_point) * scale, cast to the output type
    v = cx.cast(x, F32)
    if z is not None:
        v = cx.op("sub", [v, cx.cast(_param(cx, z, x, axis, block), F32)])
    y = cx.op("mul", [v, cx.cast(_param(cx, s, x, axis, block), F32)])
    return cx.cast(y, out_dt)


@conv("DynamicQuantizeLinear")
def _dynamic_quantize_linear(cx, ins, a):
    # Composed rather than the IR's dynamic_quantize, whose u8 scheme multiplies by 1/scale
    # and maps an all-zero input to scale 1: ONNX divides by the scale (ties round differently)
    # and gives scale 1/255 there. The reference, step by step:
    #   scale = (max(0, max x) - min(0, min x)) / 255  (1 / 255 when both are 0)
    #   zp = rint(clip(0 - min / scale, 0, 255));  y = saturate(rint(x / scale) + zp)
    x = ins[0]
    if x.dtype is not F32:
        raise Unsupported(f"DynamicQuantizeLinear on {x.dtype} (ONNX defines it for float32)")
    every = {"axes": tuple(range(_rank(x))), "keepdims": False}
    zero = cx.const(0.0, F32)
    mx = cx.op("maximum", [cx.op("max", [x], every), zero])
    mn = cx.op("minimum", [cx.op("min", [x], every), zero])
    rng = cx.op("sub", [mx, mn])
    rng = cx.op("where", [cx.op("eq", [rng, zero]), cx.const(1.0, F32), rng])
    scale = cx.op("div", [rng, cx.const(255.0, F32)])
    izp = cx.op("sub", [zero, cx.op("div", [mn, scale])])
    zp = _round_even(cx, cx.op("clamp", [izp], {"min": 0.0, "max": 255.0}))
    y = cx.op("add", [_round_even(cx, cx.op("div", [x, scale])), zp])
    return [_saturate(cx, y, dtypes.u8), scale, cx.cast(zp, dtypes.u8)]


# ---------------------------------------------------------------- integer matmul

def _check_int8(cx, *vals):
    for v in vals:
        if v is not None and v.dtype not in INT8:
            raise Unsupported(f"{cx.node.op_type} on {v.dtype} (only uint8 / int8)")


def _mm_zero_point(cx, z, operand, rows: bool):
    """A MatMulInteger zero point as the IR takes it: a scalar, or a vector along the rows of
    a (per row) or the columns of b (per column); None when absent."""
    if z is None or _is_scalar(z):
        return z
    if _rank(z) != 1 and not (rows and _rank(z) == 2 and z.shape[1] == 1 and _rank(operand) == 2):
        raise Unsupported(f"a zero point of shape {list(z.shape)}")
    return _reshape(cx, z, (z.shape[0],))


def _matmul_integer(cx, A, B, az, bz):
    _check_int8(cx, A, B, az, bz)
    if _rank(A) < 2 or _rank(B) < 2:
        # a 1-D operand is a row (a) or a column (b) for matmul, dropped from the result
        a2 = _reshape(cx, A, (1,) + tuple(A.shape)) if _rank(A) == 1 else A
        b2 = _reshape(cx, B, tuple(B.shape) + (1,)) if _rank(B) == 1 else B
        y = _matmul_integer(cx, a2, b2, az, bz)
        shape = list(y.shape)
        if _rank(B) == 1:
            shape.pop(-1)
        if _rank(A) == 1:
            shape.pop(-2 if _rank(B) != 1 else -1)
        return _reshape(cx, y, shape)
    if az is not None and _rank(az) == 1 and az.shape[0] not in (1, A.shape[-2]):
        raise Unsupported("an a_zero_point that is neither per tensor nor per row")
    if bz is not None and _rank(bz) == 1 and bz.shape[0] not in (1, B.shape[-1]):
        raise Unsupported("a b_zero_point that is neither per tensor nor per column")
    if az is None and bz is not None:
        az = cx.const(0, A.dtype)
    args = [A, B] + [v for v in (az, bz) if v is not None]
    return cx.op("matmul_integer", args)


@conv("MatMulInteger")
def _matmul_integer_conv(cx, ins, a):
    A, B = ins[0], ins[1]
    return _matmul_integer(cx, A, B, _mm_zero_point(cx, ins[2], A, True),
                           _mm_zero_point(cx, ins[3], B, False))


@conv("QLinearMatMul")
def _qlinear_matmul(cx, ins, a):
    A, a_s, a_z, B, b_s, b_z, y_s, y_z = (ins[k] for k in range(8))
    _check_int8(cx, y_z)
    acc = _matmul_integer(cx, A, B, _mm_zero_point(cx, a_z, A, True), _mm_zero_point(cx, b_z, B, False))
    if not _is_scalar(a_s):  # per row of a: [M] -> [M, 1]
        a_s = _reshape(cx, a_s, (a_s.shape[0], 1))
    # the multiplier in the scales' own type, then the product in float64 (the reference's
    # int32 * float32 array promotes to float64)
    ft = a_s.dtype
    m = cx.op("div", [cx.op("mul", [a_s, cx.cast(b_s, ft)]), cx.cast(y_s, ft)])
    d = cx.op("mul", [cx.cast(acc, F64), cx.cast(m, F64)])
    out_dt = y_z.dtype if y_z is not None else A.dtype
    if y_z is not None:
        d = cx.op("add", [d, cx.cast(_reshape(cx, y_z, ()) if _is_scalar(y_z) else y_z, F64)])
    return _saturate(cx, d, out_dt)


# ---------------------------------------------------------------- integer convolution

def _conv_acc(cx, x, w, xz, wz, a):
    """The exact integer convolution sum(x - x_zp) * (w - w_zp), as float32 when every partial
    sum provably fits its 24-bit mantissa, else float64. Zero padding pads ``x - x_zp``,
    i.e. the padded positions stand for the zero point, as in the reference."""
    _check_int8(cx, x, w, xz, wz)
    k = int(np.prod([d for d in w.shape[1:]]))
    ft = F32 if k * 255 * 255 < 2 ** 24 else F64
    xf = cx.cast(x, ft)
    if xz is not None:
        xf = cx.op("sub", [xf, cx.cast(_reshape(cx, xz, ()), ft)])
    wf = cx.cast(w, ft)
    if wz is not None:
        wzb = _reshape(cx, wz, ()) if _is_scalar(wz) else \
            _reshape(cx, wz, (wz.shape[0],) + (1,) * (_rank(w) - 1))
        wf = cx.op("sub", [wf, cx.cast(wzb, ft)])
    return CONVERTERS["Conv"](cx, [xf, wf, None], a)


@conv("ConvInteger")
def _conv_integer(cx, ins, a):
    return cx.cast(_conv_acc(cx, ins[0], ins[1], ins[2], ins[3], a), I32)


@conv("QLinearConv")
def _qlinear_conv(cx, ins, a):
    x, x_s, x_z, w, w_s, w_z, y_s, y_z, bias = (ins[k] for k in range(9))
    _check_int8(cx, y_z)
    acc = cx.cast(_conv_acc(cx, x, w, x_z, w_z, a), F64)
    nd = _rank(x) - 2
    if bias is not None:  # int32 [O], added to the integer sum
        acc = cx.op("add", [acc, _reshape(cx, cx.cast(bias, F64), (bias.shape[0],) + (1,) * nd)])
    if not _is_scalar(w_s):  # per output channel
        w_s = _reshape(cx, w_s, (1, w_s.shape[0]) + (1,) * nd)
    ft = x_s.dtype
    m = cx.op("div", [cx.op("mul", [_reshape(cx, x_s, ()), cx.cast(w_s, ft)]),
                      cx.cast(_reshape(cx, y_s, ()), ft)])
    d = cx.op("mul", [acc, cx.cast(m, F64)])
    out_dt = y_z.dtype if y_z is not None else x.dtype
    if y_z is not None:
        d = cx.op("add", [d, cx.cast(_reshape(cx, y_z, ()), F64)])
    return _saturate(cx, d, out_dt)
