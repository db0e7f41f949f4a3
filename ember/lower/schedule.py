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
from .loop_ir import Buffer, Expr, Loop, Matmul, Program, RowKernel, Stage, Template
from .lowering import View, out_vars


@dataclass
class Fusion:
    producer: str
    consumer: str
    buffer: str
    bytes_saved: Dim   # per call, as an expression of the input dims
    kind: str = "epilogue"  # epilogue: into a GEMM/reduction; row: reductions + store in one kernel

    def __str__(self):
        what = f"epilogue of {self.producer}" if self.kind == "epilogue" else f"one row kernel with {self.producer}"
        return f"{self.consumer} -> {what} (saves {self.bytes_saved} bytes of {self.buffer})"


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
    if isinstance(k, RowKernel):
        _buffers(k.body, bufs)
        for st in k.stages:
            _buffers(st.body, bufs)
            if st.reduce.post is not None:
                _buffers(st.reduce.post, bufs)
        return bufs
    if isinstance(k, Template):
        bufs |= set(k.inputs())
        for e in k.exprs():
            _buffers(e, bufs)
    elif isinstance(k, Matmul):
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
            # a Template takes an epilogue when it has the field (e.g. the int8 GEMM)
            takes_epilogue = isinstance(k, Matmul) or (isinstance(k, Template) and hasattr(k, "epilogue"))
            fusable = takes_epilogue or (isinstance(k, Loop) and k.reduce is not None
                                         and k.reduce.op != "argmax")
            if t.kind != "temp" or not fusable:
                continue
            rs = readers.get(t, [])
            if len(rs) != 1:
                continue
            j = rs[0]
            p = prog.kernels[j]
            if not isinstance(p, Loop) or p.reduce is not None:
                continue
            remap = None
            if tuple(p.shape) != _out_shape(k):
                remap = _split_dims(k, p)
                if remap is None:
                    continue
            flat = View(t, p.shape).flat_index(out_vars(len(p.shape)))
            loads = _loads(p.body, t, [])
            if not loads or not all(same(ld.args[0], flat) for ld in loads):
                continue
            # P moves up to K's place: everything else it reads must already be written there
            if any(writer.get(b, -1) >= i for b in _bufs_of(p) if b is not t):
                continue
            acc = L.var("acc", getattr(k, "acc_dtype", k.out.dtype))
            old = k.epilogue if takes_epilogue else k.reduce.post
            value = old if old is not None else acc
            body, target = p.body, loads[0]
            if remap is not None:
                memo: dict = {}
                body, target = _subst_vars(body, remap, memo), _subst_vars(target, remap, memo)
            new = _replace(body, target, value)
            if takes_epilogue:
                k.epilogue = new
            else:
                k.reduce.post = new
            k.out = p.out
            _merge_origins(prog, k.name, [p.name])
            del prog.kernels[j]
            prog.temps = [b for b in prog.temps if b is not t]
            if log is not None:
                log.append(Fusion(k.name, p.name, t.name, t.numel * t.dtype.itemsize * 2))
            changed = True
            break
    return prog


def _merge_origins(prog: Program, into: str, names: list, first: bool = False) -> None:
    """The graph nodes of kernels ``names`` now belong to kernel ``into`` (before its own when
    ``first``: a row kernel's reductions run before its store)."""
    moved = [o for n in names for o in prog.origins.pop(n, [])]
    own = prog.origins.get(into, [])
    prog.origins[into] = list(dict.fromkeys(moved + own if first else own + moved))


def _split_dims(k, p: Loop) -> dict | None:
    """When ``p`` reads a Matmul's output with each of its dims split into one or more
    consecutive dims of ``p`` (a conv's [n, O, Ho*Wo] read as [n, O, Ho, Wo]; a [B*S, N]
    linear read as [B, S, N], with B and S static or symbolic), the consumer's loop vars as
    expressions of the Matmul's; else None."""
    if not isinstance(k, Matmul):
        return None
    out, shape = _out_shape(k), tuple(p.shape)
    if len(shape) <= len(out):
        return None
    m, c = {}, 0
    for d, size in enumerate(out):
        group = []
        if c < len(shape) and (shape[c] is size or shape[c] == size):
            group = [size]
            c += 1
        else:
            total = 1
            # consecutive consumer dims whose product is this dim (static sizes stop once
            # past it; symbolic products are compared as polynomials)
            while c < len(shape) and total != size and not (isinstance(total, int) and
                                                            isinstance(size, int) and total > size):
                total = total * shape[c]
                group.append(shape[c])
                c += 1
            if total != size:
                return None
        v, first = L.var(f"i{d}"), c - len(group)
        if len(group) == 1:
            m[f"i{first}"] = v
            continue
        stride = 1
        for j in reversed(range(len(group))):   # consumer var = (v // stride) % size, innermost first
            e = v if stride == 1 else L.binary("floordiv", v, L.idx(stride))
            m[f"i{first + j}"] = e if j == 0 else L.binary("mod", e, L.idx(group[j]))
            stride = stride * group[j]
    return m if c == len(shape) else None


def _subst_vars(e: Expr, m: dict, memo: dict) -> Expr:
    """``e`` with loop vars renamed by ``m`` (name -> Expr), all at once."""
    if id(e) in memo:
        return memo[id(e)]
    if e.op == "var":
        r = m.get(e.arg, e)
    elif not e.args:
        r = e
    else:
        args = tuple(_subst_vars(a, m, memo) for a in e.args)
        r = e if all(x is y for x, y in zip(args, e.args)) else L.Expr(e.op, args, e.dtype, e.arg)
    memo[id(e)] = r
    return r


def _bufs_of(p: Loop) -> set:
    return _buffers(p.body, set())


def _replace_loads(e: Expr, buf: Buffer, index: Expr, new: Expr) -> Expr | None:
    """``e`` with every load of ``buf`` (which must be at ``index``) replaced; None if another index."""
    bad = []

    def walk(x, memo):
        if id(x) in memo:
            return memo[id(x)]
        if x.op == "load" and x.arg is buf:
            if not same(x.args[0], index):
                bad.append(x)
            r = new
        elif not x.args:
            r = x
        else:
            args = tuple(walk(a, memo) for a in x.args)
            r = x if all(a is b for a, b in zip(args, x.args)) else L.Expr(x.op, args, x.dtype, x.arg)
        memo[id(x)] = r
        return r
    out = walk(e, {})
    return None if bad else out


def _row_rank(k: Loop, shape) -> int | None:
    """k reduces the trailing dims of ``shape`` (keeping them as 1s): how many rows lead."""
    n = len(shape)
    for rows in range(n):
        if tuple(k.shape) == tuple(shape[:rows]) + (1,) * (n - rows) and \
                tuple(k.reduce.sizes) == tuple(shape[rows:]):
            return rows
    return None


def fuse_rows(prog: Program, log: list | None = None) -> Program:
    """Fold row reductions and the pointwise loop that consumes them into one RowKernel."""
    j = 0
    while j < len(prog.kernels):
        p = prog.kernels[j]
        j += 1
        if not isinstance(p, Loop) or p.reduce is not None or not p.shape:
            continue
        group = _row_group(prog, p)
        if group is None:
            continue
        rows, members = group
        vars_ = out_vars(len(p.shape))
        stages, body = [], p.body
        for idx, k in enumerate(members):
            index = View(k.out, k.shape).flat_index(vars_)
            name = f"red{idx}"
            sv = L.var(name, k.body.dtype)
            stage_body = k.body
            for st, km in zip(stages, members):
                stage_body = _replace_loads(stage_body, km.out, View(km.out, km.shape).flat_index(vars_),
                                            L.var(st.var, km.body.dtype))
            stages.append(Stage(name, k.reduce, stage_body))
            body = _replace_loads(body, k.out, index, sv)
        kernel = RowKernel(p.name, p.out, tuple(p.shape), rows, stages, body)
        _merge_origins(prog, p.name, [m.name for m in members], first=True)
        ids = {id(m) for m in members}
        prog.kernels = [kernel if k is p else k for k in prog.kernels if id(k) not in ids]
        dead = {m.out for m in members}
        prog.temps = [b for b in prog.temps if b not in dead]
        if log is not None:
            saved = sum((m.out.numel * m.out.dtype.itemsize for m in members), 0)
            log.append(Fusion(", ".join(m.name for m in members), p.name, ", ".join(b.name for b in dead),
                              saved * 2, "row"))
        j = 0  # indices moved; rescan (groups are few)
    return prog


def _row_group(prog: Program, p: Loop):
    """The reduce kernels feeding ``p`` row-wise (and each other), if they can all fold in."""
    readers: dict = {}
    for k in prog.kernels:
        for b in _reads(k):
            readers.setdefault(b, []).append(k)
    writer = {k.out: k for k in prog.kernels}
    members, todo, rows = [], [p], None
    while todo:
        cur = todo.pop()
        for b in _reads(cur):
            k = writer.get(b)
            if not isinstance(k, Loop) or k.reduce is None or k.reduce.op == "argmax" or b.kind != "temp" \
                    or k in members:
                continue
            r = _row_rank(k, p.shape)
            if r is None or (rows is not None and r != rows):
                return None
            rows = r
            members.append(k)
            todo.append(k)
    if not members:
        return None
    ids = {id(m) for m in members} | {id(p)}
    if any(id(r) not in ids for m in members for r in readers.get(m.out, [])):
        return None  # someone else needs the reduction's result in memory
    order = {id(k): i for i, k in enumerate(prog.kernels)}
    members.sort(key=lambda k: order[id(k)])
    vars_ = out_vars(len(p.shape))
    for i, k in enumerate(members):  # every read of a member's result must be its row value
        index = View(k.out, k.shape).flat_index(vars_)
        for user in members[i + 1:] + [p]:
            for ld in _loads(user.body, k.out, []):
                if not same(ld.args[0], index):
                    return None
            if isinstance(user, Loop) and user.reduce and user.reduce.post is not None and \
                    _loads(user.reduce.post, k.out, []):
                return None
    return rows, members
