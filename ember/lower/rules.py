"""One lowering per graph op, registered in ``RULES`` (op name -> function).

A rule takes the Lowerer, the node and the Refs of its inputs and returns the Ref of its
result: a ``Lazy`` for pointwise work (fused into whoever consumes it), a ``View`` for data
movement on buffers, or a stored ``View`` after emitting a reduction / matmul kernel.
"""
from __future__ import annotations

import math

import numpy as np

from ..ir import dtypes
from ..ir.ops.registry import broadcast_shapes
from ..ir.symbolic import Dim, prod
from . import loop_ir as L
from .loop_ir import Expr
from .lowering import Lazy, Lowerer, View, contiguous_strides, out_vars
from .packing import PANEL, pack_panels

RULES: dict = {}


def rule(*names):
    def deco(fn):
        for n in names:
            RULES[n] = fn
        return fn
    return deco


def bcast(ref, out_shape):
    """Loader of ``ref`` at an index of the (broadcast) ``out_shape``."""
    lead = len(out_shape) - len(ref.shape)

    def fn(index):
        sub = index[lead:]
        return ref.load([L.const(0, dtypes.i64) if d == 1 and o != 1 else i
                         for i, d, o in zip(sub, ref.shape, out_shape[lead:])])
    return fn


def pointwise(node, refs, fn):
    out = node.outputs[0]
    loaders = [bcast(r, out.shape) for r in refs]
    return Lazy(out.shape, out.dtype, lambda ix: fn(*[ld(ix) for ld in loaders]))


# -- pointwise math

def gelu_expr(x: Expr, approximate: str) -> Expr:
    if approximate == "tanh":
        inner = L.mul(math.sqrt(2 / math.pi), x + L.mul(0.044715, x * x * x))
        return L.mul(0.5, x) * L.add(1.0, L.unary("tanh", inner))
    return L.mul(0.5, x) * L.add(1.0, L.unary("erf", L.mul(1 / math.sqrt(2), x)))


_SIMPLE_UNARY = {"neg", "abs", "exp", "log", "sqrt", "rsqrt", "reciprocal", "tanh", "erf",
                 "sigmoid", "relu", "sin", "cos", "floor", "ceil", "sign"}
for _op in _SIMPLE_UNARY:
    RULES[_op] = (lambda op: lambda lw, n, r: pointwise(n, r, lambda x: L.unary(op, x)))(_op)

RULES["logical_not"] = lambda lw, n, r: pointwise(n, r, lambda x: L.unary("not", x))
RULES["silu"] = lambda lw, n, r: pointwise(n, r, lambda x: x * L.unary("sigmoid", x))
RULES["gelu"] = lambda lw, n, r: pointwise(n, r, lambda x: gelu_expr(x, n.attrs["approximate"]))
RULES["cast"] = lambda lw, n, r: pointwise(n, r, lambda x: L.cast(x, n.attrs["dtype"]))


@rule("clamp")
def _clamp(lw, n, r):
    def fn(x):
        if n.attrs["min"] is not None:
            x = L.binary("max", x, L.cast(L.const(n.attrs["min"], dtypes.f64), x.dtype))
        if n.attrs["max"] is not None:
            x = L.binary("min", x, L.cast(L.const(n.attrs["max"], dtypes.f64), x.dtype))
        return x
    return pointwise(n, r, fn)


_BINARY = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "pow": "pow",
           "maximum": "max", "minimum": "min", "mod": "mod", "eq": "eq", "ne": "ne",
           "lt": "lt", "le": "le", "gt": "gt", "ge": "ge", "logical_and": "and",
           "logical_or": "or", "logical_xor": "xor"}
for _g, _l in _BINARY.items():
    if _g == "div":
        continue
    RULES[_g] = (lambda op: lambda lw, n, r: pointwise(n, r, lambda a, b: L.binary(op, a, b)))(_l)


@rule("div")
def _div(lw, n, r):
    # integer division is floor division in the IR's meaning
    op = "div" if n.outputs[0].dtype.is_float else "floordiv"
    return pointwise(n, r, lambda a, b: L.binary(op, a, b))


RULES["where"] = lambda lw, n, r: pointwise(n, r, lambda c, a, b: L.where(c, a, b))


# -- reductions

_INIT_OP = {"sum": "sum", "mean": "sum", "max": "max", "min": "min", "prod": "prod"}


def reduce_over(lw, x, axes, keepdims, op, value=None, post_fn=None, dtype=None):
    """Reduce ``x`` over ``axes``; ``post_fn(acc, count)`` finishes (e.g. divides for mean)."""
    rank = len(x.shape)
    axes = sorted(a % rank for a in axes)
    out_shape = tuple(1 if k in axes else x.shape[k] for k in range(rank) if keepdims or k not in axes)
    ov, rv = out_vars(len(out_shape)), out_vars(len(axes), "r")
    index, oi = [], 0
    for k in range(rank):
        if k in axes:
            index.append(rv[axes.index(k)])
            if keepdims:
                oi += 1
        else:
            index.append(ov[oi])
            oi += 1
    sizes = [x.shape[k] for k in axes]
    body = x.load(index)
    post = post_fn(L.var("acc", body.dtype), prod(sizes)) if post_fn else None
    return lw.reduce(dtype or x.dtype, out_shape, sizes, body, op, post, value)


def _count(n: Dim, like: Expr) -> Expr:
    return L.cast(L.idx(n), like.dtype)


@rule("sum", "mean", "max", "min", "prod")
def _reduce(lw, n, r):
    post = (lambda acc, cnt: acc / _count(cnt, acc)) if n.op == "mean" else None
    return reduce_over(lw, r[0], n.attrs["axes"], n.attrs["keepdims"], _INIT_OP[n.op],
                       n.outputs[0], post)


@rule("cumsum")
def _cumsum(lw, n, r):
    # out[..., i, ...] = sum over j <= i: a masked reduction, quadratic in the axis length,
    # which suits the short axes it meets in models (sequence positions, mask offsets)
    x, out = r[0], n.outputs[0]
    ax, rank = n.attrs["axis"] % len(x.shape), len(x.shape)
    ov, rj = out_vars(rank), L.var("r0")
    src = [rj if k == ax else v for k, v in enumerate(ov)]
    body = L.where(L.binary("le", rj, ov[ax]), x.load(src), 0)
    return lw.reduce(out.dtype, out.shape, (x.shape[ax],), body, "sum", None, out)


@rule("argmax")
def _argmax(lw, n, r):
    return reduce_over(lw, r[0], [n.attrs["axis"]], n.attrs["keepdims"], "argmax",
                       n.outputs[0], dtype=dtypes.i64)


@rule("softmax", "log_softmax")
def _softmax(lw, n, r):
    x, ax = r[0], n.attrs["axis"] % len(r[0].shape)
    m = reduce_over(lw, x, [ax], True, "max")
    shifted = Lazy(x.shape, x.dtype, lambda ix: x.load(ix) - bcast(m, x.shape)(ix))
    if n.op == "softmax":
        s = reduce_over(lw, Lazy(x.shape, x.dtype, lambda ix: L.unary("exp", shifted.load(ix))),
                        [ax], True, "sum")
        return Lazy(x.shape, x.dtype,
                    lambda ix: L.unary("exp", shifted.load(ix)) / bcast(s, x.shape)(ix))
    s = reduce_over(lw, Lazy(x.shape, x.dtype, lambda ix: L.unary("exp", shifted.load(ix))),
                    [ax], True, "sum", post_fn=lambda acc, cnt: L.unary("log", acc))
    return Lazy(x.shape, x.dtype, lambda ix: shifted.load(ix) - bcast(s, x.shape)(ix))


@rule("layer_norm")
def _layer_norm(lw, n, r):
    x, rank = r[0], len(r[0].shape)
    ax = n.attrs["axis"] % rank
    axes = list(range(ax, rank))
    mean_post = lambda acc, cnt: acc / _count(cnt, acc)  # noqa: E731
    mean = reduce_over(lw, x, axes, True, "sum", post_fn=mean_post)
    centered = Lazy(x.shape, x.dtype, lambda ix: x.load(ix) - bcast(mean, x.shape)(ix))
    var = reduce_over(lw, Lazy(x.shape, x.dtype, lambda ix: centered.load(ix) * centered.load(ix)),
                      axes, True, "sum",
                      post_fn=lambda acc, cnt: L.unary("rsqrt", acc / _count(cnt, acc) + n.attrs["eps"]))
    params = [bcast(p, x.shape) for p in r[1:]]

    def fn(ix):
        y = centered.load(ix) * bcast(var, x.shape)(ix)
        if len(params) > 0:
            y = y * params[0](ix)
        if len(params) > 1:
            y = y + params[1](ix)
        return y
    return Lazy(x.shape, x.dtype, fn)


# -- matmul family

def _operand(lw: Lowerer, ref, batch_rank: int, inner_stride_pref: int | None = None):
    """A View usable by the Matmul template, broadcasting its batch dims to ``batch_rank``."""
    v = lw.as_view(ref)
    lead = batch_rank - (len(v.shape) - 2)
    strides = (0,) * lead + tuple(0 if d == 1 else s for d, s in zip(v.shape[:-2], v.strides[:-2]))
    return v, L.Operand(v.buf, v.offset, strides + tuple(v.strides[-2:]))


def _const_to_contig(lw: Lowerer, ref):
    """Constant operands get a contiguous copy at compile time (weights are laid out once)."""
    arr = lw.const_array(ref) if isinstance(ref, View) else None
    if arr is not None and not ref.is_contiguous:
        return lw.const(arr, ref.dtype, ref.buf.name + "_t")
    return ref


def _packed_weight(lw: Lowerer, b, batch: tuple):
    """A constant B packed into GEMM panels at compile time: one matrix shared by every batch
    entry, or one per entry of a static batch (``Bp[b..., j // 16, k, j % 16]``)."""
    if not isinstance(b, View):
        return None
    bb = tuple(b.shape[:-2])
    shared = all(d == 1 for d in bb)
    if not shared and (len(bb) != len(batch) or any(not isinstance(d, int) or d != e for d, e in zip(bb, batch))):
        return None
    arr = lw.const_array(b)
    if arr is None:
        return None
    k, n = arr.shape[-2:]
    if shared:
        packed, strides = pack_panels(arr.reshape(k, n)), (0,) * len(batch)
    else:
        mats = arr.reshape((-1, k, n))
        packed = np.stack([pack_panels(m) for m in mats]).reshape(bb + (-(-n // PANEL), k, PANEL))
        strides = tuple(int(s) // packed.itemsize for s in packed.strides[:len(bb)])
    buf = lw.const(packed, b.dtype, b.buf.name + "_packed").buf
    return L.Operand(buf, 0, strides + (0, 0), packed=PANEL)


def _widen_bf16(lw: Lowerer, ref):
    """A bf16 operand as f32 for the GEMM, which computes in f32 anyway: a constant converted
    at compile time, anything else by a conversion loop that the GEMM then reads."""
    if ref.dtype is not dtypes.bf16:
        return ref
    arr = lw.const_array(ref) if isinstance(ref, View) else None
    if arr is not None:
        return lw.const(arr.astype(np.float32), dtypes.f32, ref.buf.name + "_f32")
    return lw.store(Lazy(ref.shape, dtypes.f32, lambda ix: L.cast(ref.load(ix), dtypes.f32)))


def emit_matmul(lw: Lowerer, a, b, out_shape, dtype, value=None, epilogue=None):
    """out = epilogue(a @ b) for a: [..., M, K], b: [..., K, N] (ranks >= 2).

    ``epilogue(acc, index)`` builds the expression applied to each accumulated element while
    it is still in registers; ``value`` is the graph value stored, so that a graph output is
    written in place.
    """
    out_shape = tuple(out_shape)
    batch = out_shape[:-2]
    a, b = _widen_bf16(lw, a), _widen_bf16(lw, b)   # the result is rounded to bf16 on store
    f32 = a.dtype is dtypes.f32 and b.dtype is dtypes.f32  # the blocked GEMM takes any strides
    _, opa = _operand(lw, a, len(batch))
    opb = _packed_weight(lw, b, batch) if f32 else None
    if opb is None:
        b = _const_to_contig(lw, b)
        vb, opb = _operand(lw, b, len(batch))
        if not f32 and opb.strides[-1] != 1 and not (opa.strides[-1] == 1 and opb.strides[-2] == 1):
            _, opb = _operand(lw, lw.store(vb), len(batch))  # neither form is unit-stride: copy
    buf = lw.temp(dtype, out_shape, value)
    epi = None
    if epilogue is not None:
        epi = epilogue(L.var("acc", dtype), out_vars(len(out_shape)))
    lw.prog.kernels.append(L.Matmul(lw._name("k"), buf, batch, a.shape[-2], b.shape[-1], a.shape[-1],
                                    opa, opb, epi))
    return View(buf, out_shape)


@rule("matmul")
def _matmul(lw, n, r):
    a, b = r
    out = n.outputs[0]
    if len(a.shape) >= 2 and len(b.shape) >= 2:
        return emit_matmul(lw, a, b, out.shape, out.dtype, out)
    # vectors: view as matrices, multiply, view back
    a2 = reshape(a, (1,) + a.shape) if len(a.shape) == 1 else a
    b2 = reshape(b, b.shape + (1,)) if len(b.shape) == 1 else b
    full = broadcast_shapes(a2.shape[:-2], b2.shape[:-2]) + (a2.shape[-2], b2.shape[-1])
    return reshape(emit_matmul(lw, a2, b2, full, out.dtype), out.shape)


@rule("linear")
def _linear(lw, n, r):
    x, w = r[0], r[1]
    bias = r[2] if len(r) > 2 else None
    wt = permute(w, (1, 0))   # [K, N]
    out = n.outputs[0]
    epi = (lambda acc, ix: acc + bias.load([ix[-1]])) if bias is not None else None
    if len(x.shape) == 2:
        return emit_matmul(lw, x, wt, out.shape, out.dtype, out, epi)
    # fold leading dims into M so that the weight is streamed once per row tile
    m = prod(x.shape[:-1])
    x2 = reshape(x, (m, x.shape[-1]))
    res = emit_matmul(lw, x2, wt, (m, w.shape[0]), out.dtype, out, epi)
    return reshape(res, out.shape)


@rule("rms_norm")
def _rms_norm(lw, n, r):
    x, rank = r[0], len(r[0].shape)
    axes = list(range(n.attrs["axis"] % rank, rank))
    inv = reduce_over(lw, Lazy(x.shape, x.dtype, lambda ix: x.load(ix) * x.load(ix)), axes, True, "sum",
                      post_fn=lambda acc, cnt: L.unary("rsqrt", acc / _count(cnt, acc) + n.attrs["eps"]))
    w = bcast(r[1], x.shape) if len(r) > 1 else None
    return Lazy(x.shape, x.dtype, lambda ix: x.load(ix) * bcast(inv, x.shape)(ix) * (w(ix) if w else 1.0))


# -- convolution and pooling

def window(oh, ow, rh, rw, stride, padding, dilation, H, W, check=True):
    """Input coordinates of tap (rh, rw) of the window at output (oh, ow), and whether it lies
    inside the input (a constant True when ``check`` is off: no padding, no ragged window)."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    hh, ww = oh * sh + rh * dh - ph, ow * sw + rw * dw - pw
    if not check:
        return hh, ww, L.const(True, dtypes.bool_)
    inb = L.binary("and", L.binary("and", L.binary("ge", hh, 0), L.binary("lt", hh, L.idx(H))),
                   L.binary("and", L.binary("ge", ww, 0), L.binary("lt", ww, L.idx(W))))
    return hh, ww, inb


@rule("batch_norm")
def _batch_norm(lw, n, r):
    x, mean, var, w, b = r
    c = [lambda ix, p=p: p.load([ix[1]]) for p in (mean, var, w, b)]
    eps = n.attrs["eps"]
    return Lazy(x.shape, x.dtype, lambda ix: (x.load(ix) - c[0](ix)) * L.unary("rsqrt", c[1](ix) + eps)
                * c[2](ix) + c[3](ix))


# -- data movement

def _monomial(d):
    """(coefficient, atoms) of an int or a one-term symbolic dim; None otherwise."""
    if isinstance(d, int):
        return d, ()
    terms = getattr(d, "terms", None)
    if terms is None or len(terms) != 1:
        return None
    (atoms, coef), = terms.items()
    return coef, atoms


def _divides(a, b) -> bool:
    """Whether dim ``a`` divides dim ``b`` as monomials (2*s divides 6*b*s); used only when one
    of them is symbolic (int runs keep their size order)."""
    if isinstance(a, int) and isinstance(b, int):
        return False
    ma, mb = _monomial(a), _monomial(b)
    if ma is None or mb is None or ma[0] == 0 or mb[0] % ma[0]:
        return False
    rest = list(mb[1])
    for atom in ma[1]:
        if atom not in rest:
            return False
        rest.remove(atom)
    return True


def _reshape_groups(src, dst):
    """Pair runs of source and target dims with equal products ([(src_dims, dst_dims)])."""
    groups, i, j = [], 0, 0
    while i < len(src) or j < len(dst):
        si, dj = [i], [j]
        if i >= len(src) or j >= len(dst):
            si, dj = list(range(i, len(src))), list(range(j, len(dst)))
            groups.append((si, dj))
            break
        ps, pd = src[i], dst[j]
        i, j = i + 1, j + 1
        while ps != pd:
            # a symbolic run grows on the side whose product divides the other's ([b, s, N] ->
            # [b*s, N] pairs (b, s) with b*s and leaves N to itself)
            if i < len(src) and _divides(ps, pd) and not _divides(pd, ps):
                ps, i = ps * src[i], i + 1
                si.append(i - 1)
            elif j < len(dst) and _divides(pd, ps) and not _divides(ps, pd):
                pd, j = pd * dst[j], j + 1
                dj.append(j - 1)
            elif i < len(src) and (isinstance(ps, int) and isinstance(pd, int) and ps < pd
                                   or j >= len(dst)):
                ps, i = ps * src[i], i + 1
                si.append(i - 1)
            elif j < len(dst):
                pd, j = pd * dst[j], j + 1
                dj.append(j - 1)
            elif i < len(src):
                ps, i = ps * src[i], i + 1
                si.append(i - 1)
            else:
                return None
        groups.append((si, dj))
    return groups


def reshape(x, shape):
    """``x`` viewed as ``shape``: new strides when the buffer allows it, else index math."""
    shape = tuple(shape)
    groups = _reshape_groups(x.shape, shape)
    if isinstance(x, View):
        if x.is_contiguous:
            return View(x.buf, shape, None, x.offset)
        if groups is not None:
            strides, ok = [0] * len(shape), True
            for si, dj in groups:
                real = [k for k in si if x.shape[k] != 1]
                # a run of source dims merges when each stride is the next one's span
                if any(x.strides[a] != x.strides[b] * x.shape[b] for a, b in zip(real, real[1:])):
                    ok = False
                    break
                inner = x.strides[real[-1]] if real else 1
                for d, s in zip(dj, contiguous_strides([shape[k] for k in dj])):
                    strides[d] = s * inner
            if ok:
                return View(x.buf, shape, strides, x.offset)
    groups = groups or [(list(range(len(x.shape))), list(range(len(shape))))]

    def fn(ix):
        src = [L.idx(0)] * len(x.shape)  # size-1 dims are always index 0
        for si, dj in groups:
            flat = L.idx(0)
            for d in dj:
                if shape[d] != 1:
                    flat = flat * L.idx(shape[d]) + ix[d]
            real = [k for k in si if x.shape[k] != 1]
            for k in reversed(real):
                src[k] = flat % L.idx(x.shape[k]) if k != real[0] else flat
                flat = flat // L.idx(x.shape[k])
        return x.load(src)
    return Lazy(shape, x.dtype, fn)


RULES["reshape"] = lambda lw, n, r: reshape(r[0], n.attrs["shape"])


def permute(x, perm):
    shape = tuple(x.shape[p] for p in perm)
    if isinstance(x, View):
        return View(x.buf, shape, tuple(x.strides[p] for p in perm), x.offset)
    inv = [perm.index(k) for k in range(len(perm))]
    return Lazy(shape, x.dtype, lambda ix: x.load([ix[inv[k]] for k in range(len(perm))]))


RULES["permute"] = lambda lw, n, r: permute(r[0], n.attrs["perm"])


@rule("expand")
def _expand(lw, n, r):
    x, shape = r[0], tuple(n.attrs["shape"])
    lead = len(shape) - len(x.shape)
    if isinstance(x, View):
        strides = (0,) * lead + tuple(0 if d == 1 and o != 1 else s
                                      for d, o, s in zip(x.shape, shape[lead:], x.strides))
        return View(x.buf, shape, strides, x.offset)
    return Lazy(shape, x.dtype, bcast(x, shape))


@rule("slice")
def _slice(lw, n, r):
    x = r[0]
    ax, start, step = n.attrs["axis"] % len(x.shape), n.attrs["start"], n.attrs["step"]
    shape = n.outputs[0].shape
    if isinstance(x, View):
        strides = list(x.strides)
        strides[ax] = x.strides[ax] * step
        return View(x.buf, shape, strides, x.offset + start * x.strides[ax])
    return Lazy(shape, x.dtype, lambda ix: x.load(
        [i * step + L.idx(start) if k == ax else i for k, i in enumerate(ix)]))


def _clamp_idx(i: Expr, size) -> Expr:
    return L.binary("max", L.binary("min", i, L.idx(size) - 1), 0)


@rule("concat")
def _concat(lw, n, r):
    out = n.outputs[0]
    ax = n.attrs["axis"] % len(out.shape)

    def fn(ix):
        starts, s = [], L.idx(0)
        for x in r:
            starts.append(s)
            s = s + L.idx(x.shape[ax])
        val = None
        for x, st in reversed(list(zip(r, starts))):
            sub = [_clamp_idx(i - st, x.shape[ax]) if k == ax else i for k, i in enumerate(ix)]
            v = x.load(sub)
            val = v if val is None else L.where(L.binary("lt", ix[ax], st + L.idx(x.shape[ax])), v, val)
        return val
    return Lazy(out.shape, out.dtype, fn)


@rule("pad")
def _pad(lw, n, r):
    x, pads, out = r[0], n.attrs["pads"], n.outputs[0]

    def fn(ix):
        sub, cond = [], L.const(True, dtypes.bool_)
        for k, i in enumerate(ix):
            j = i - pads[2 * k]
            if pads[2 * k] > 0 or pads[2 * k + 1] > 0:
                ok = L.binary("and", L.binary("ge", j, 0), L.binary("lt", j, L.idx(x.shape[k])))
                cond = ok if cond.op == "const" else L.binary("and", cond, ok)
                j = _clamp_idx(j, x.shape[k])
            sub.append(j)
        v = x.load(sub)
        return L.where(cond, v, L.cast(L.const(n.attrs["value"], dtypes.f64), out.dtype))
    return Lazy(out.shape, out.dtype, fn)


def _index(e: Expr, size) -> Expr:
    """An index read from a tensor: widened to i64, negatives wrap, clamped in bounds."""
    e = L.cast(e, dtypes.i64)
    e = L.where(L.binary("lt", e, 0), e + L.idx(size), e)
    return _clamp_idx(e, size)


@rule("embedding")
def _embedding(lw, n, r):
    w, ids = r
    out = n.outputs[0]
    k = len(ids.shape)
    return Lazy(out.shape, out.dtype,
                lambda ix: w.load([_index(ids.load(ix[:k]), w.shape[0]), ix[k]]))


@rule("index_select")
def _index_select(lw, n, r):
    x, ids = r
    ax, out = n.attrs["axis"] % len(x.shape), n.outputs[0]
    return Lazy(out.shape, out.dtype, lambda ix: x.load(
        [_index(ids.load([ix[ax]]), x.shape[ax]) if k == ax else i for k, i in enumerate(ix)]))


@rule("gather")
def _gather(lw, n, r):
    x, ids = r
    ax, out = n.attrs["axis"] % len(x.shape), n.outputs[0]
    return Lazy(out.shape, out.dtype, lambda ix: x.load(
        [_index(ids.load(ix), x.shape[ax]) if k == ax else i for k, i in enumerate(ix)]))


@rule("arange")
def _arange(lw, n, r):
    out = n.outputs[0]
    a = n.attrs
    return Lazy(out.shape, out.dtype,
                lambda ix: L.cast(L.idx(a["start"]) + ix[0] * a["step"], out.dtype))


@rule("full")
def _full(lw, n, r):
    out = n.outputs[0]
    return Lazy(out.shape, out.dtype, lambda ix: L.cast(L.const(n.attrs["value"], dtypes.f64), out.dtype))


from . import rules_attention, rules_conv, rules_extra, rules_quant  # noqa: E402,F401  (register the lowerings of extra ops)
