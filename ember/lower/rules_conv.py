"""Lowerings of convolution and pooling, registered into ``rules.RULES``.

``conv2d`` (groups = 1, f32) becomes the blocked fp32 GEMM (backends/cpu/gemm.py) with the
image as its B operand (implicit im2col); other convolutions and the poolings are loop-IR
reductions over a window.
"""
from __future__ import annotations

import math

import numpy as np

from ..ir import dtypes
from ..ir.ops.nn import _pair
from ..ir.symbolic import prod
from . import loop_ir as L
from .lowering import Lazy, View, out_vars
from .packing import ImageOperand
from .rules import emit_matmul, rule, window
from . import winograd as wg


@rule("conv2d")
def _conv2d(lw, n, r):
    x, w = r[0], r[1]
    bias = r[2] if len(r) > 2 else None
    out = n.outputs[0]
    (sh, sw), (ph, pw), (dh, dw) = (_pair(n.attrs[k]) for k in ("stride", "padding", "dilation"))
    groups = n.attrs["groups"]
    O, Cg, KH, KW = w.shape
    H, W = x.shape[2], x.shape[3]
    # a group with a few output channels is a GEMM per group; depthwise ones (one or two
    # output channels per group) would use a sliver of the micro-tile and stay a reduction
    if (groups == 1 or O // groups >= 4) and x.dtype is dtypes.f32 and out.dtype is dtypes.f32:
        res = _conv2d_gemm(lw, x, w, bias, out, (sh, sw), (ph, pw), (dh, dw), groups)
        if res is not None:
            return res
    i0, i1, i2, i3 = out_vars(4)
    rc, rh, rw = out_vars(3, "r")
    og = O // groups
    cin = (i1 // og) * Cg + rc if groups > 1 else rc
    hh, ww, inb = window(i2, i3, rh, rw, (sh, sw), (ph, pw), (dh, dw), H, W, check=bool(ph or pw))
    xv = lw.as_view(x)
    xi = xv.flat_index([i0, cin, hh, ww])
    body = L.masked_load(xv.buf, xi, inb, 0.0) * w.load([i1, rc, rh, rw])
    post = (L.var("acc", out.dtype) + bias.load([i1])) if bias is not None else None
    return lw.reduce(out.dtype, out.shape, (Cg, KH, KW), body, "sum", post, out)


def _conv2d_gemm(lw, x, w, bias, out, stride, pad, dil, groups):
    """conv2d as a GEMM per image (and group): out[n, g] (O/G x Ho*Wo) = W[g] (O/G x Cg*KH*KW) @ cols[n, g].

    ``cols`` is the im2col matrix, never stored: the GEMM packs its panels straight from the
    image (``ImageOperand``); a 1x1 convolution with stride 1 and no padding reads the image
    as the matrix it already is. The weight is the A operand, read in place (unit stride
    along K); the output comes out in NCHW order, with the bias as the GEMM epilogue (where
    ReLU and a residual add join it, lower/schedule.py, when groups == 1).
    """
    wv = lw.const_array(w)
    if wv is None:
        return None
    O, Cg, KH, KW = w.shape
    N, C, H, W = x.shape
    Ho, Wo = out.shape[2], out.shape[3]
    # the form follows the image size; a symbolic one (a dynamic image) by its example size
    hoh, woh = lw.hint(Ho), lw.hint(Wo)
    sized = isinstance(C, int) and hoh is not None and woh is not None
    if groups == 1 and (KH, KW) == (3, 3) and tuple(stride) + tuple(dil) == (1, 1, 1, 1) and \
            sized and wg.worthwhile(C, O, hoh, woh):
        return _conv2d_winograd(lw, x, wv, bias, out, pad)
    if groups == 1 and KH * KW > 1 and sized and rows_form(O, hoh * woh):
        return _conv2d_rows(lw, x, wv, bias, out, stride, pad, dil)
    K, og = Cg * KH * KW, O // groups
    a = lw.const(np.ascontiguousarray(wv.reshape(O, K)), w.dtype, w.buf.name + "_gemm")
    xv = lw.as_view(x)
    if groups == 1:
        epi = (lambda acc, ix: acc + bias.load([ix[1]])) if bias is not None else None
        if KH == KW == 1 and tuple(stride) + tuple(pad) == (1, 1, 0, 0) and xv.is_contiguous:
            res = emit_matmul(lw, a, View(xv.buf, (N, K, H * W), None, xv.offset), (N, O, Ho * Wo),
                              out.dtype, out, epi)
            return View(res.buf, out.shape)
        batch, sa, sb = (N,), (0,), (prod((C, H, W)),)
    else:  # batch dims (image, group); output channel = group * og + row
        epi = (lambda acc, ix: acc + bias.load([ix[1] * og + ix[2]])) if bias is not None else None
        batch, sa, sb = (N, groups), (0, og * K), (prod((C, H, W)), prod((Cg, H, W)))
    if not xv.is_contiguous:
        xv = lw.store(xv)
    opa = L.Operand(a.buf, 0, sa + (K, 1))
    opb = ImageOperand(xv.buf, xv.offset, sb + (0, 0),
                       geom=(Cg, H, W, KH, KW, Wo, tuple(stride), tuple(pad), tuple(dil)))
    buf = lw.temp(out.dtype, batch + (og, Ho * Wo), out)
    e = epi(L.var("acc", out.dtype), out_vars(len(batch) + 2)) if epi is not None else None
    lw.prog.kernels.append(L.Matmul(lw._name("k"), buf, batch, og, Ho * Wo, K, opa, opb, e))
    return View(buf, out.shape)


def rows_form(O: int, P: int) -> bool:
    """Pixels as the GEMM's rows where they fill its 16-column panels worse than the output
    channels would: a 7x7 image's 49 pixels are 64 columns, 512 channels are 512. (The
    caller keeps 1x1 kernels out: their image is already the B operand and their K is too
    short to pay for the gather; 256 -> 512 at 7x7 took 44 us as it is, 54 us this way.)"""
    fill = lambda n: n / (-(-n // 16) * 16)
    return fill(O) > fill(P) + 0.05


def _conv2d_rows(lw, x, wv, bias, out, stride, pad, dil):
    """conv2d with the pixels as rows: out^T[(n, p), o] = cols[(n, p), :] @ W^T, the bias as
    the epilogue, the result read back in NCHW order (where a ReLU or a residual add joins
    that copy). ``cols`` [N * Ho * Wo, KH * KW * C] is the im2col matrix with the channel
    innermost, gathered from the image transposed to NHWC, so that each (pixel, tap) is one
    contiguous run of C floats; W^T is reordered to match and packed at compile time as B.
    For small images (ResNet's 7x7 and 14x14 layers), whose pixels leave the last 16-column
    panel part-empty in the weight-as-rows form, and where a batch of images then shares
    one pass over the weight (512 -> 512 3x3 at 7x7, batch 8: 6.99 -> 5.00 ms; 256 -> 512
    stride 2: 3.57 -> 2.42 ms; at batch 1 the weight's stream from memory bounds both forms
    alike inside ResNet-18, alone 762 -> 564 us)."""
    O, C, KH, KW = wv.shape
    N, _, H, W = x.shape
    Ho, Wo = out.shape[2], out.shape[3]
    P, K = Ho * Wo, C * KH * KW
    xv = lw.as_view(x)
    nhwc = lw.store(Lazy((N, H, W, C), x.dtype, lambda ix: xv.load([ix[0], ix[3], ix[1], ix[2]])))
    check = bool(pad[0] or pad[1])

    def gather(ix):
        n, ho, wo, rh, rw, c = ix
        hh, ww, inb = window(ho, wo, rh, rw, stride, pad, dil, H, W, check=check)
        return L.masked_load(nhwc.buf, nhwc.flat_index([n, hh, ww, c]), inb, 0.0)
    cols = lw.store(Lazy((N, Ho, Wo, KH, KW, C), x.dtype, gather))
    wt = lw.const(np.ascontiguousarray(wv.transpose(2, 3, 1, 0).reshape(K, O)), dtypes.f32, "conv_rows_w")
    epi = (lambda acc, ix: acc + bias.load([ix[1]])) if bias is not None else None
    res = emit_matmul(lw, View(cols.buf, (N * P, K)), wt, (N * P, O), out.dtype, None, epi)
    return Lazy(out.shape, out.dtype, lambda ix: res.load([ix[0] * P + ix[2] * Wo + ix[3], ix[1]]))


def _conv2d_winograd(lw, x, wv, bias, out, pad):
    """A 3x3 stride-1 conv2d as Winograd F(4x4, 3x3) (lower/winograd.py): input transform,
    36 GEMMs (tiles as rows, the transformed weight packed at compile time as B), output
    transform with the bias as its epilogue (where ReLU and a residual add join it,
    lower/schedule.py)."""
    O, C = wv.shape[0], wv.shape[1]
    N, _, H, W = x.shape
    Ho, Wo = out.shape[2], out.shape[3]
    nth, ntw = wg.tiles(Ho), wg.tiles(Wo)
    T = N * nth * ntw
    xv = lw.as_view(x)
    if not xv.is_contiguous:
        xv = lw.store(xv)
    ut = lw.const(np.ascontiguousarray(wg.transform_weight(wv).transpose(0, 2, 1)), dtypes.f32, "winograd_u")
    v = lw.temp(out.dtype, (wg.POS, T, C))
    lw.prog.kernels.append(wg.WinogradInput(lw._name("k"), v, (wg.POS, T, C), xv.buf, xv.offset, N, C, H, W,
                                            tuple(pad), nth, ntw))
    m = emit_matmul(lw, View(v, (wg.POS, T, C)), ut, (wg.POS, T, O), out.dtype)
    buf = lw.temp(out.dtype, out.shape, out)
    i = out_vars(4)
    epi = L.var("acc", out.dtype) + bias.load([i[1]]) if bias is not None else None
    lw.prog.kernels.append(wg.WinogradOutput(lw._name("k"), buf, tuple(out.shape), m.buf, N, O, Ho, Wo,
                                             nth, ntw, epi))
    return View(buf, out.shape)


def _window(n, x, kind):
    (kh, kw), (sh, sw), (ph, pw) = (_pair(n.attrs[k]) for k in ("kernel", "stride", "padding"))
    dh, dw = _pair(n.attrs.get("dilation", (1, 1)))
    i0, i1, i2, i3 = out_vars(4)
    rh, rw = out_vars(2, "r")
    # always checked: ceil_mode windows can run past the input's end even without padding
    hh, ww, inb = window(i2, i3, rh, rw, (sh, sw), (ph, pw), (dh, dw), x.shape[2], x.shape[3])
    return (kh, kw), (sh, sw), (ph, pw), (i2, i3), (hh, ww), inb


@rule("max_pool2d")
def _max_pool(lw, n, r):
    x, out = lw.as_view(r[0]), n.outputs[0]
    (kh, kw), _, _, _, (hh, ww), inb = _window(n, x, "max")
    i0, i1 = out_vars(2)
    lowest = -math.inf if out.dtype.is_float else int(np.iinfo(out.dtype.np).min)
    body = L.masked_load(x.buf, x.flat_index([i0, i1, hh, ww]), inb, lowest)
    return lw.reduce(out.dtype, out.shape, (kh, kw), body, "max", None, out)


@rule("avg_pool2d")
def _avg_pool(lw, n, r):
    x, out = lw.as_view(r[0]), n.outputs[0]
    (kh, kw), (sh, sw), (ph, pw), (oh, ow), (hh, ww), inb = _window(n, x, "avg")
    i0, i1 = out_vars(2)
    body = L.masked_load(x.buf, x.flat_index([i0, i1, hh, ww]), inb, 0.0)
    H, W = L.idx(x.shape[2]), L.idx(x.shape[3])
    h0, w0 = oh * sh - ph, ow * sw - pw
    if n.attrs["count_include_pad"]:  # window clipped to the padded input
        ch = L.binary("min", h0 + kh, H + ph) - h0
        cw = L.binary("min", w0 + kw, W + pw) - w0
    else:  # window clipped to the input
        ch = L.binary("min", h0 + kh, H) - L.binary("max", h0, 0)
        cw = L.binary("min", w0 + kw, W) - L.binary("max", w0, 0)
    post = L.var("acc", out.dtype) / L.cast(ch * cw, out.dtype)
    return lw.reduce(out.dtype, out.shape, (kh, kw), body, "sum", post, out)


@rule("adaptive_avg_pool2d")
def _adaptive(lw, n, r):
    x, out = lw.as_view(r[0]), n.outputs[0]
    OH, OW = n.attrs["output_size"]
    H, W = x.shape[2], x.shape[3]
    i0, i1, i2, i3 = out_vars(4)
    rh, rw = out_vars(2, "r")

    def bounds(i, size, osz):
        return (i * L.idx(size)) // osz, (i * L.idx(size) + L.idx(size) + (osz - 1)) // osz
    h0, h1 = bounds(i2, H, OH)
    w0, w1 = bounds(i3, W, OW)
    # the largest window is ceil(size/out)+1; lanes past a window's end are masked
    kh = (H + OH - 1) // OH + 1 if isinstance(H, int) else H
    kw = (W + OW - 1) // OW + 1 if isinstance(W, int) else W
    if isinstance(H, int) and H % OH == 0:
        kh = H // OH
    if isinstance(W, int) and W % OW == 0:
        kw = W // OW
    hh, ww = h0 + rh, w0 + rw
    inb = L.binary("and", L.binary("lt", hh, h1), L.binary("lt", ww, w1))
    body = L.masked_load(x.buf, x.flat_index([i0, i1, hh, ww]), inb, 0.0)
    post = L.var("acc", out.dtype) / L.cast((h1 - h0) * (w1 - w0), out.dtype)
    return lw.reduce(out.dtype, out.shape, (kh, kw), body, "sum", post, out)
