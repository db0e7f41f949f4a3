"""Kernel-level fusion: pull a pointwise consumer into the kernel that produces its input.

After lowering, a GEMM or a reduction often stores a temp that exactly one pointwise loop
reads back element for element (bias+GELU after a linear, ReLU after a conv). Folding that
loop into the producer's epilogue saves writing and re-reading the temp: the decision is
scored by those bytes and logged, so ``ember inspect`` can show it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir.symbolic import Dim
from . import loop_ir as L
from .loop_ir import Buffer, Expr, Loop, Matmul, Program
from .lowering import View, out_vars


@dataclass
class Fusion:
    producer: str
    consumer: str
    buffer: str
    bytes_saved: Dim   # per call, as an expression of the input dims

    def __str__(self):
        return f"{self.consumer} -> epilogue of {self.producer} (saves {self.bytes_saved} bytes of {self.buffer})"


def _loads(e: Expr, buf: Buffer, out: list) -> list:
    if e.op == "load" and e.arg is buf:
        out.append(e)
    for a in e.args:
        _loads(a, buf, out)
    return out


def _buffers(e: Expr, out: set) -> set:
    if e.op == "load":
        out.add(e.arg)
    for a in e.args:
        _buffers(a, out)
    return out


def same(a: Expr, b: Expr) -> bool:
    """Structural equality (interning is gone once lowering has finished)."""
    if a is b:
        return True
    if a.op != b.op or a.dtype is not b.dtype or len(a.args) != len(b.args):
        return False
    if a.op == "load":
        if a.arg is not b.arg:
            return False
    elif a.arg != b.arg or type(a.arg) is not type(b.arg):
        return False
    return all(same(x, y) for x, y in zip(a.args, b.args))


def _replace(e: Expr, target: Expr, new: Expr, memo=None) -> Expr:
    memo = {} if memo is None else memo
    if e is target or (e.op == "load" and same(e, target)):
        return new
    if id(e) in memo:
        return memo[id(e)]
    if not e.args:
        return e
    args = tuple(_replace(a, target, new, memo) for a in e.args)
    r = e if all(x is y for x, y in zip(args, e.args)) else L.Expr(e.op, args, e.dtype, e.arg)
    memo[id(e)] = r
    return r


def _out_shape(k) -> tuple:
    return tuple(k.batch) + (k.M, k.N) if isinstance(k, Matmul) else tuple(k.shape)


def _reads(k) -> set:
    bufs: set = set()
    if isinstance(k, Matmul):
        bufs |= {k.a.buf, k.b.buf}
        if k.epilogue is not None:
            _buffers(k.epilogue, bufs)
    else:
        _buffers(k.body, bufs)
        if k.reduce and k.reduce.post is not None:
            _buffers(k.reduce.post, bufs)
    return bufs


def fuse_epilogues(prog: Program, log: list | None = None) -> Program:
    """Merge single-reader pointwise loops into their producer's epilogue (in place)."""
    changed = True
    while changed:
        changed = False
        writer = {k.out: i for i, k in enumerate(prog.kernels)}
        readers: dict = {}
        for i, k in enumerate(prog.kernels):
            for b in _reads(k):
                readers.setdefault(b, []).append(i)
        for i, k in enumerate(prog.kernels):
            t = k.out
            fusable = isinstance(k, Matmul) or (k.reduce is not None and k.reduce.op != "argmax")
            if t.kind != "temp" or not fusable:
                continue
            rs = readers.get(t, [])
            if len(rs) != 1:
                continue
            j = rs[0]
            p = prog.kernels[j]
            if not isinstance(p, Loop) or p.reduce is not None or tuple(p.shape) != _out_shape(k):
                continue
            flat = View(t, p.shape).flat_index(out_vars(len(p.shape)))
            loads = _loads(p.body, t, [])
            if not loads or not all(same(ld.args[0], flat) for ld in loads):
                continue
            # P moves up to K's place: everything else it reads must already be written there
            if any(writer.get(b, -1) >= i for b in _bufs_of(p) if b is not t):
                continue
            acc = L.var("acc", k.out.dtype)
            old = k.epilogue if isinstance(k, Matmul) else k.reduce.post
            value = old if old is not None else acc
            new = _replace(p.body, loads[0], value)
            if isinstance(k, Matmul):
                k.epilogue = new
            else:
                k.reduce.post = new
            k.out = p.out
            del prog.kernels[j]
            prog.temps = [b for b in prog.temps if b is not t]
            if log is not None:
                log.append(Fusion(k.name, p.name, t.name, t.numel * t.dtype.itemsize * 2))
            changed = True
            break
    return prog


def _bufs_of(p: Loop) -> set:
    return _buffers(p.body, set())
