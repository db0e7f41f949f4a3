"""Neural-network ops: matmul, linear, conv2d, batch norm, pooling."""
from __future__ import annotations

import numpy as np

from ... import errors
from ..graph import TensorType
from .registry import Attr, broadcast_shapes, register, same_dtype


def _matmul_infer(ts, a):
    x, y = ts
    dt = same_dtype("matmul", ts)
    if x.rank < 1 or y.rank < 1:
        raise errors.ShapeError("matmul: operands must have rank >= 1")
    xs = (1,) + tuple(x.shape) if x.rank == 1 else tuple(x.shape)
    ys = tuple(y.shape) + (1,) if y.rank == 1 else tuple(y.shape)
    if xs[-1] != ys[-2]:
        raise errors.ShapeError(f"matmul: inner dims differ ({xs[-1]} vs {ys[-2]}) "
                                f"for shapes {list(map(str, x.shape))} @ {list(map(str, y.shape))}")
    batch = broadcast_shapes(xs[:-2], ys[:-2])
    out = batch + ((xs[-2],) if x.rank > 1 else ()) + ((ys[-1],) if y.rank > 1 else ())
    return [TensorType(dt, out)]


def _matmul_ref(xs, a):
    x, y = xs
    if x.dtype == np.float16:
        return np.matmul(x.astype(np.float32), y.astype(np.float32)).astype(np.float16)
    return np.matmul(x, y).astype(x.dtype)


register("matmul", _matmul_infer, _matmul_ref, arity=(2, 2), category="nn",
         doc="numpy matmul semantics, batch dims broadcast")


def _linear_infer(ts, a):
    x, w = ts[0], ts[1]
    same_dtype("linear", ts)
    if w.rank != 2 or x.rank < 1 or x.shape[-1] != w.shape[1]:
        raise errors.ShapeError(f"linear: input [..., {x.shape[-1] if x.rank else '?'}] "
                                f"does not match weight {list(map(str, w.shape))} ([out, in])")
    if len(ts) == 3 and tuple(ts[2].shape) != (w.shape[0],):
        raise errors.ShapeError(f"linear: bias must be [{w.shape[0]}]")
    return [TensorType(x.dtype, tuple(x.shape[:-1]) + (w.shape[0],))]


def _linear_ref(xs, a):
    y = _matmul_ref([xs[0], xs[1].T], a)
    return (y + xs[2]).astype(y.dtype) if len(xs) == 3 else y


register("linear", _linear_infer, _linear_ref, arity=(2, 3), category="nn",
         doc="linear(x, weight[out, in], [bias]) = x @ weight.T + bias (torch layout)")


def conv_out(size, k, stride, pad_lo, pad_hi, dilation, ceil_mode=False):
    span = size + pad_lo + pad_hi - dilation * (k - 1) - 1
    if ceil_mode:
        n = -(-span // stride) + 1 if isinstance(span, int) else (span + stride - 1) // stride + 1
        # the last window must start inside the input or the left padding (torch rule)
        if isinstance(n, int) and (n - 1) * stride >= size + pad_lo:
            n -= 1
        return n
    return span // stride + 1


def _pair(v):
    return tuple(v) if len(v) == 2 else (v[0], v[0])


def _conv2d_infer(ts, a):
    x, w = ts[0], ts[1]
    same_dtype("conv2d", ts)
    if x.rank != 4 or w.rank != 4:
        raise errors.ShapeError("conv2d: input and weight must be 4-D (NCHW, OIHW)")
    g = a["groups"]
    if x.shape[1] != w.shape[1] * g:
        raise errors.ShapeError(f"conv2d: input has {x.shape[1]} channels, weight expects "
                                f"{w.shape[1]} x groups {g}")
    if isinstance(w.shape[0], int) and w.shape[0] % g:
        raise errors.ShapeError("conv2d: out channels must divide by groups")
    (sh, sw), (ph, pw), (dh, dw) = _pair(a["stride"]), _pair(a["padding"]), _pair(a["dilation"])
    oh = conv_out(x.shape[2], w.shape[2], sh, ph, ph, dh)
    ow = conv_out(x.shape[3], w.shape[3], sw, pw, pw, dw)
    return [TensorType(x.dtype, (x.shape[0], w.shape[0], oh, ow))]


def conv2d_ref(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = conv_out(h, kh, sh, ph, ph, dh), conv_out(wd, kw, sw, pw, pw, dw)
    og = o // groups
    out = np.zeros((n, o, oh, ow), dtype=np.float64 if x.dtype == np.float64 else np.float32)
    for gi in range(groups):
        xs = xp[:, gi * cg:(gi + 1) * cg]
        ws = w[gi * og:(gi + 1) * og].astype(out.dtype)
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
                out[:, gi * og:(gi + 1) * og] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out.astype(x.dtype)


register("conv2d", _conv2d_infer,
         lambda xs, a: conv2d_ref(*xs, stride=a["stride"], padding=a["padding"],
                                  dilation=a["dilation"], groups=a["groups"]),
         attrs={"stride": Attr("ints", (1, 1)), "padding": Attr("ints", (0, 0)),
                "dilation": Attr("ints", (1, 1)), "groups": Attr("int", 1)},
         arity=(2, 3), category="nn", doc="conv2d(x[N,C,H,W], w[O,C/g,kh,kw], [bias[O]])")


def _bn_infer(ts, a):
    x = ts[0]
    same_dtype("batch_norm", ts)
    for t in ts[1:]:
        if tuple(t.shape) != (x.shape[1],):
            raise errors.ShapeError(f"batch_norm: parameters must be [{x.shape[1]}]")
    return [x]


def _bn_ref(xs, a):
    x, mean, var, w, b = xs
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + x.dtype.type(a["eps"]))
    return (y * w.reshape(shape) + b.reshape(shape)).astype(x.dtype)


register("batch_norm", _bn_infer, _bn_ref, attrs={"eps": Attr("float", 1e-5)}, arity=(5, 5),
         category="nn", doc="inference batch norm(x, mean, var, weight, bias) over channel dim 1")

_POOL = {"kernel": Attr("ints"), "stride": Attr("ints"), "padding": Attr("ints", (0, 0)),
         "ceil_mode": Attr("bool", False)}


def _pool_infer(name):
    def infer(ts, a):
        x = ts[0]
        if x.rank != 4:
            raise errors.ShapeError(f"{name}: input must be NCHW")
        (kh, kw), (sh, sw), (ph, pw) = _pair(a["kernel"]), _pair(a["stride"]), _pair(a["padding"])
        dh, dw = _pair(a.get("dilation", (1, 1)))
        oh = conv_out(x.shape[2], kh, sh, ph, ph, dh, a["ceil_mode"])
        ow = conv_out(x.shape[3], kw, sw, pw, pw, dw, a["ceil_mode"])
        return [TensorType(x.dtype, (x.shape[0], x.shape[1], oh, ow))]
    return infer


def pool_ref(x, kernel, stride, padding, ceil_mode, mode, dilation=(1, 1), count_include_pad=True):
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(_pair, (kernel, stride, padding, dilation))
    oh, ow = conv_out(h, kh, sh, ph, ph, dh, ceil_mode), conv_out(w, kw, sw, pw, pw, dw, ceil_mode)
    out = np.empty((n, c, oh, ow), dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            h0, w0 = i * sh - ph, j * sw - pw
            hs = [h0 + k * dh for k in range(kh) if 0 <= h0 + k * dh < h]
            ws = [w0 + k * dw for k in range(kw) if 0 <= w0 + k * dw < w]
            win = x[:, :, hs][:, :, :, ws]
            if mode == "max":
                out[:, :, i, j] = win.max(axis=(2, 3))
            else:
                if count_include_pad:  # padding counts, the part past the input's end does not
                    cnt = (min(h0 + kh, h + ph) - h0) * (min(w0 + kw, w + pw) - w0)
                else:
                    cnt = len(hs) * len(ws)
                out[:, :, i, j] = win.sum(axis=(2, 3)) / cnt
    return out


register("max_pool2d", _pool_infer("max_pool2d"),
         lambda xs, a: pool_ref(xs[0], a["kernel"], a["stride"], a["padding"], a["ceil_mode"], "max",
                                dilation=a["dilation"]),
         attrs={**_POOL, "dilation": Attr("ints", (1, 1))}, category="nn")
register("avg_pool2d", _pool_infer("avg_pool2d"),
         lambda xs, a: pool_ref(xs[0], a["kernel"], a["stride"], a["padding"], a["ceil_mode"], "avg",
                                count_include_pad=a["count_include_pad"]),
         attrs={**_POOL, "count_include_pad": Attr("bool", True)}, category="nn")


def adaptive_bounds(i, in_size, out_size):
    return (i * in_size) // out_size, -(-((i + 1) * in_size) // out_size)


def _adaptive_ref(xs, a):
    x = xs[0]
    n, c, h, w = x.shape
    oh, ow = a["output_size"]
    out = np.empty((n, c, oh, ow), dtype=x.dtype)
    for i in range(oh):
        h0, h1 = adaptive_bounds(i, h, oh)
        for j in range(ow):
            w0, w1 = adaptive_bounds(j, w, ow)
            out[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return out


def _adaptive_infer(ts, a):
    x = ts[0]
    if x.rank != 4:
        raise errors.ShapeError("adaptive_avg_pool2d: input must be NCHW")
    return [TensorType(x.dtype, (x.shape[0], x.shape[1]) + tuple(a["output_size"]))]


register("adaptive_avg_pool2d", _adaptive_infer, _adaptive_ref,
         attrs={"output_size": Attr("ints")}, category="nn")


def _attention_infer(ts, a):
    q, k, v = ts[:3]
    same_dtype("attention", ts)
    if min(q.rank, k.rank, v.rank) < 2 or q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise errors.ShapeError(f"attention: q [..., Sq, D], k [..., Sk, D], v [..., Sk, Dv] expected, got "
                                f"{list(map(str, q.shape))}, {list(map(str, k.shape))}, {list(map(str, v.shape))}")
    batch = broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    if len(ts) == 4:
        broadcast_shapes(ts[3].shape, batch + (q.shape[-2], k.shape[-2]))
    return [TensorType(q.dtype, batch + (q.shape[-2], v.shape[-1]))]


def attention_ref(q, k, v, mask=None, scale=1.0, causal=False, safe=True):
    f = np.float64 if q.dtype == np.float64 else np.float32
    s = np.matmul(q.astype(f), np.swapaxes(k.astype(f), -1, -2)) * f(scale)
    if mask is not None:
        s = s + mask.astype(f)
    if causal:
        sq, sk = s.shape[-2:]
        s = np.where(np.tril(np.ones((sq, sk), bool), k=sk - sq), s, -np.inf)
    m = np.max(s, axis=-1, keepdims=True)
    dead = np.isneginf(m)
    with np.errstate(invalid="ignore"):
        e = np.exp(s - np.where(dead, 0, m))
        p = e / np.sum(e, axis=-1, keepdims=True)
    if safe:
        p = np.where(dead, 0, p)
    return np.matmul(p, v.astype(f)).astype(q.dtype)


register("attention", _attention_infer,
         lambda xs, a: attention_ref(*xs, scale=a["scale"], causal=a["causal"], safe=a["safe"]),
         attrs={"scale": Attr("float", 1.0), "causal": Attr("bool", False), "safe": Attr("bool", True)},
         arity=(3, 4), category="nn",
         doc="softmax(q @ k^T * scale + mask [causal]) @ v; safe: fully masked rows give 0")
