"""Print a loop-IR Program as one C translation unit with a single entry point.

    int ember_main(const int64_t *dims, void *const *in, void *const *out,
                   void *const *consts, char *workspace);
    int64_t ember_workspace_size(const int64_t *dims);

``dims`` holds the program's symbols in order. Kernels are static functions; identical
kernels (a layer repeated N times) are printed once and called N times. Loops are written
so that gcc vectorizes the innermost one; OpenMP splits the outer ones across cores when
the work is large enough to pay for the fork.
"""
from __future__ import annotations

import itertools
import re
import math

import numpy as np

from ...errors import EmberError
from ...ir import dtypes
from ...ir.symbolic import prod
from ...ir.symbolic import to_c as sym_to_c
from ...lower.attention import Attention
from ...lower.loop_ir import Buffer, Expr, Loop, Matmul, Program, RowKernel, Template
from .fastmath import C_SOURCE as FASTMATH

ALIGN = 64           # bytes; workspace buffers start on cache-line boundaries
UNIT = "/* ember: translation unit */"  # toolchain.split_units: where a program may be cut
PARALLEL_MIN = 1 << 15  # elements (x reduction length) below which a kernel stays serial
JOIN_SPIN_US = 100      # how long a thread that is done with its share waits, spinning, for the others

# libgomp puts a thread that waits at a barrier to sleep after a short spin (GOMP_SPINCOUNT;
# the benchmark suite keeps it short so that no contender's threads spin between calls), and
# waking it costs tens of microseconds on a VM (a halted vCPU), paid at the next region's
# start. A thread done with its share of a region therefore spins here, for at most
# JOIN_SPIN_US, until the whole team has arrived; the barrier after it then finds everyone.
# The count is a hint, not the synchronization: the OpenMP barrier that follows still is.
# ``arrived`` is shared by the team, zero before the region, and every thread passes each
# join point once, so join point g completes at g * n arrivals.
JOIN_C = r"""#include <omp.h>
#if defined(__x86_64__) || defined(__i386__)
#define ember_pause() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define ember_pause() __asm__ __volatile__("yield")
#else
#define ember_pause() ((void)0)
#endif
static inline void ember_spin_join(int *arrived) {
  const int n = omp_get_num_threads();
  if (n < 2) return;
  const int t = __atomic_add_fetch(arrived, 1, __ATOMIC_ACQ_REL), target = (t + n - 1) / n * n;
  const double t0 = omp_get_wtime();
  for (int s = 1; __atomic_load_n(arrived, __ATOMIC_ACQUIRE) < target; s++) {
    ember_pause();
    if (s % 32 == 0 && omp_get_wtime() - t0 > """ + f"{JOIN_SPIN_US}e-6" + r""") break;
  }
}
"""

PRELUDE = r"""
#include <stdint.h>
#include <stdbool.h>
#include <math.h>
#include <string.h>
#define EMBER_ABI 1
#ifndef EMBER_KERNEL  /* static in one translation unit; toolchain.build may compile kernels apart */
#define EMBER_KERNEL static
#endif
static inline int64_t ember_fdiv(int64_t a, int64_t b) { int64_t q = a / b; return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q; }
static inline int64_t ember_fmod(int64_t a, int64_t b) { int64_t r = a % b; return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r; }
static inline double ember_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
static inline int64_t ember_min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t ember_max64(int64_t a, int64_t b) { return a > b ? a : b; }
""" + JOIN_C + FASTMATH

# bfloat16: the upper 16 bits of a float32. Kept in a one-member struct, not a bare uint16_t,
# so that C code that reads a bf16 buffer without converting does not compile instead of
# silently doing integer arithmetic on the bits. Stores round to nearest even; NaN stays NaN.
BF16_C = r"""
typedef struct { uint16_t bits; } ember_bf16;
static inline float ember_bf16_to_f32(ember_bf16 h) {
  uint32_t u = (uint32_t)h.bits << 16; float f; memcpy(&f, &u, 4); return f; }
static inline ember_bf16 ember_f32_to_bf16(float f) {
  uint32_t u; memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (ember_bf16){(uint16_t)((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return (ember_bf16){(uint16_t)(u >> 16)}; }
static inline float ember_bf16_round(float f) { return ember_bf16_to_f32(ember_f32_to_bf16(f)); }
"""
PRELUDE += BF16_C


# printers of Template kernels, by class: (kernel, params, printer) -> C body; and the
# C each kind needs once per program (helper functions), by class
TEMPLATES: dict = {}
TEMPLATE_PRELUDES: dict = {}


def template(kind, prelude: str | None = None):
    """Register the C printer of a ``loop_ir.Template`` subclass.

    The printer gets the kernel, ``params`` (buffer -> C parameter name) and the
    ``KernelPrinter`` (for ``ExprPrinter``-based epilogues) and returns the function body;
    ``dims`` and the program's symbols are in scope as in every kernel.
    """
    def deco(fn):
        TEMPLATES[kind] = fn
        if prelude is not None:
            TEMPLATE_PRELUDES[kind] = prelude
        return fn
    return deco


def compute_type(dt) -> str:
    """The C type an element is computed in: 16-bit floats compute in float."""
    return "float" if dt in (dtypes.f16, dtypes.bf16) else dt.c_name


def storage_type(dt) -> str:
    """The C type of a buffer element (ember_bf16 for bf16: 16 bits, see BF16_C)."""
    return dt.c_name


def load_value(s: str, dt) -> str:
    """C for a loaded element ``s`` (``p[i]``) as its compute type."""
    if dt is dtypes.bf16:
        return f"ember_bf16_to_f32({s})"
    return f"((float){s})" if dt is dtypes.f16 else s


def store_value(v: str, dt) -> str:
    """C for a computed value ``v`` converted to ``dt``'s storage type."""
    if dt is dtypes.bf16:
        return f"ember_f32_to_bf16({v})"
    return f"({storage_type(dt)})({v})"


def cast_value(x: str, dt) -> str:
    """C for a value converted to ``dt`` inside an expression: a cast to a 16-bit float rounds
    to its precision there (a store would round anyway, but a fused kernel may not store it)."""
    if dt is dtypes.bool_:
        return f"({x} != 0)"
    if dt is dtypes.bf16:
        return f"ember_bf16_round((float)({x}))"
    if dt is dtypes.f16:
        return f"((float)(_Float16)({x}))"
    return f"(({compute_type(dt)}){x})"


def check_bf16_kernels(prog: Program) -> None:
    """Refuse bf16 operands of GEMM and Template kernels with a clear error: their printers
    read elements directly, and bf16 must be converted on every load (see BF16_C). Lowering
    widens a matmul's bf16 operands to f32 (rules.emit_matmul); its store rounds to bf16."""
    for k in prog.kernels:
        if isinstance(k, Matmul):
            bufs = [k.a.buf, k.b.buf]
        elif isinstance(k, Template):
            bufs = list(k.inputs()) + [k.out]
        else:
            continue
        if any(getattr(b, "dtype", None) is dtypes.bf16 for b in bufs):
            raise EmberError(f"kernel {k.name} ({type(k).__name__}) would read bf16 operands "
                             f"directly, which the CPU backend does not support (bf16 matmul, conv, "
                             f"elementwise ops, reductions and casts are); cast the model to float32 first")


def c_sym(name: str) -> str:
    return f"s_{name}"


def c_dim(d) -> str:
    return sym_to_c(d, c_sym)


def c_literal(v, dt) -> str:
    if dt is dtypes.bool_:
        return "true" if v else "false"
    if dt.is_float:
        if math.isnan(v):
            return "NAN"
        if math.isinf(v):
            return "INFINITY" if v > 0 else "(-INFINITY)"
        if dt is dtypes.bf16:
            v = float(np.asarray(v, np.float32).astype(dt.np))  # the bf16 value it stands for
        s = repr(float(v))
        return f"{s}f" if compute_type(dt) == "float" else s
    v = int(v)
    if v > 2**63 - 1:
        return f"{v}UL"   # only u64 holds these
    return f"{v}L" if abs(v) > 2**31 - 1 else str(v)


def nonneg(e: Expr) -> bool:
    """True when an integer expression is provably >= 0 (plain C / and % are then exact)."""
    if e.dtype is not None and not e.dtype.is_float and not e.dtype.is_signed:
        return True   # unsigned: also keeps u64 values above 2**63 out of int64 helpers
    if e.op == "const":
        return e.arg >= 0
    if e.op in ("var", "dim"):
        return True
    if e.op in ("add", "mul", "floordiv", "mod", "min"):
        return all(nonneg(a) for a in e.args)
    if e.op == "max":
        return any(nonneg(a) for a in e.args)
    if e.op == "where":
        return nonneg(e.args[1]) and nonneg(e.args[2])
    return False


_FN = {  # unary op -> (float, double) C function names
    "exp": ("ember_expf", "exp"), "log": ("logf", "log"), "sqrt": ("sqrtf", "sqrt"),
    "tanh": ("ember_tanhf", "tanh"), "erf": ("ember_erff", "erf"), "sin": ("sinf", "sin"),
    "cos": ("cosf", "cos"), "floor": ("floorf", "floor"), "ceil": ("ceilf", "ceil"),
    "sigmoid": ("ember_sigmoidf", "ember_sigmoid"), "pow": ("powf", "pow"),
}
_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "eq": "==", "ne": "!=", "lt": "<",
          "le": "<=", "gt": ">", "ge": ">=", "and": "&&", "or": "||", "xor": "!="}


class ExprPrinter:
    """Prints Exprs as C; subexpressions used more than once become named temporaries."""

    def __init__(self, params: dict, lines: list, indent: str):
        self.params, self.lines, self.indent = params, lines, indent
        self.names: dict[int, str] = {}
        self.uses: dict[int, int] = {}
        self.count = 0

    def count_uses(self, e: Expr):
        k = id(e)
        self.uses[k] = self.uses.get(k, 0) + 1
        if self.uses[k] == 1:
            for a in e.args:
                self.count_uses(a)

    def __call__(self, e: Expr) -> str:
        k = id(e)
        if k in self.names:
            return self.names[k]
        s = self._print(e)
        if self.uses.get(k, 0) > 1 and e.op not in ("const", "var", "dim"):
            self.count += 1
            name = f"v{self.count}"
            self.lines.append(f"{self.indent}const {compute_type(e.dtype)} {name} = {s};")
            self.names[k] = name
            return name
        return s

    def _print(self, e: Expr) -> str:
        op, a = e.op, e.args
        dt = e.dtype
        f = compute_type(dt) == "float"
        if op == "const":
            return c_literal(e.arg, dt)
        if op == "var":
            return e.arg
        if op == "dim":
            return c_dim(e.arg)
        if op == "load":
            return load_value(f"{self.params[e.arg]}[{self(a[0])}]", dt)
        if op == "cast":
            return cast_value(self(a[0]), dt)
        if op == "where":
            return f"({self(a[0])} ? {self(a[1])} : {self(a[2])})"
        if len(a) == 1:
            x = self(a[0])
            if op == "neg":
                return f"(-{x})"
            if op == "not":
                return f"(!{x})"
            if op == "abs":
                return f"fabs{'f' if f else ''}({x})" if dt.is_float else f"({x} < 0 ? -{x} : {x})"
            if op == "relu":
                return f"({x} > 0 ? {x} : 0)"
            if op == "sign":
                return f"(({compute_type(dt)})(({x} > 0) - ({x} < 0)))"
            if op == "rsqrt":
                return f"(1.0f / sqrtf({x}))" if f else f"(1.0 / sqrt({x}))"
            if op == "reciprocal":
                return f"(1.0f / {x})" if f else f"(1.0 / {x})"
            return f"{_FN[op][0 if f else 1]}({x})"
        x, y = self(a[0]), self(a[1])
        if op in ("floordiv", "mod") and not a[0].dtype.is_float:
            if nonneg(a[0]) and nonneg(a[1]):
                return f"({x} {'/' if op == 'floordiv' else '%'} {y})"
            return f"ember_f{'div' if op == 'floordiv' else 'mod'}({x}, {y})"
        if op == "mod":
            return f"fmod{'f' if f else ''}({x}, {y})"
        if op == "floordiv":
            return f"floor{'f' if f else ''}({x} / {y})"
        if op == "max":
            return f"({x} > {y} ? {x} : {y})"
        if op == "min":
            return f"({x} < {y} ? {x} : {y})"
        if op == "pow":
            return f"{_FN['pow'][0 if f else 1]}({x}, {y})"
        return f"({x} {_INFIX[op]} {y})"


def _buffers_of(e: Expr, out: list):
    if e.op == "load" and e.arg not in out:
        out.append(e.arg)
    for a in e.args:
        _buffers_of(a, out)


def _flat(shape, index_names) -> str:
    s = ""
    for d, i in zip(shape, index_names):
        s = i if not s else f"({s}) * {c_dim(d)} + {i}"
    return s or "0"


def _store(buf_param: str, dt, index: str, value: str) -> str:
    return f"{buf_param}[{index}] = {store_value(value, dt)};"


def epilogue_store(params, ind: str, epilogue, out_param: str, dt, index: str, value: str,
                   bind: str) -> list[str]:
    """C lines that store one element of a Template kernel's output: ``value`` as is, or
    through ``epilogue`` (an Expr of var("acc") and the output vars, which ``bind`` declares
    in C, e.g. "const int64_t i0 = i, i1 = j; const float acc = t[i];")."""
    if epilogue is None:
        return [ind + _store(out_param, dt, index, value)]
    lines = [ind + bind]
    pr = ExprPrinter(params, lines, ind)
    pr.count_uses(epilogue)
    val = pr(epilogue)
    return lines + [ind + _store(out_param, dt, index, val)]


class KernelPrinter:
    def __init__(self, symbols):
        self.symbols = symbols
        self.funcs: dict[str, str] = {}   # body text -> function name

    def _signature(self, bufs: list[Buffer], out: Buffer):
        params, decl = {}, []
        for k, b in enumerate(bufs):
            params[b] = f"p{k}"
            const = "" if b is out else "const "
            decl.append(f"{const}{storage_type(b.dtype)} *restrict p{k}")
        return params, decl

    def _sym_lines(self, text: str) -> list[str]:
        return [f"  const int64_t {c_sym(s)} = dims[{k}];" for k, s in enumerate(self.symbols)
                if c_sym(s) in text]

    def kernel(self, k) -> tuple[str, list[Buffer]]:
        """Returns (function name, buffer arguments in order)."""
        bufs = [k.out]
        if isinstance(k, Template):
            bufs += [b for b in dict.fromkeys(k.inputs()) if b is not k.out]
            exprs = list(k.exprs())
        elif isinstance(k, RowKernel):
            exprs = [st.body for st in k.stages] + [st.reduce.post for st in k.stages if st.reduce.post is not None]
            exprs.append(k.body)
        else:
            exprs = [k.body] if isinstance(k, Loop) else [k.epilogue] if k.epilogue is not None else []
        if isinstance(k, Loop) and k.reduce and k.reduce.post is not None:
            exprs.append(k.reduce.post)
        if isinstance(k, Matmul):
            for b in (k.a.buf, k.b.buf):
                if b not in bufs:
                    bufs.append(b)
        for e in exprs:
            _buffers_of(e, bufs)
        params, decl = self._signature(bufs, k.out)
        if isinstance(k, Template):
            if type(k) not in TEMPLATES:
                raise EmberError(f"kernel {k.name}: the CPU backend has no printer for {type(k).__name__}")
            body = TEMPLATES[type(k)](k, params, self)
        else:
            body = (self._loop(k, params) if isinstance(k, Loop) else self._rows(k, params)
                    if isinstance(k, RowKernel) else self._matmul(k, params))
        body = spin_joined(body)
        sig = f"(const int64_t *restrict dims, {', '.join(decl)})"
        text = sig + " {\n" + "\n".join(self._sym_lines(body)) + "\n" + body + "}\n"
        if text not in self.funcs:
            self.funcs[text] = f"kernel{len(self.funcs)}"
        return self.funcs[text], bufs

    # -- pointwise and reduction loops
    def _loop(self, k: Loop, params) -> str:
        lines: list[str] = []
        shape, red = k.shape, k.reduce
        rank = len(shape)
        outp = params[k.out]
        ivars = [f"i{d}" for d in range(rank)]
        work = c_dim(prod(shape) * (prod(red.sizes) if red else 1))
        if red is None:
            if rank == 0:
                pr = ExprPrinter(params, lines, "  ")
                pr.count_uses(k.body)
                v = pr(k.body)
                lines.append("  " + _store(outp, k.out.dtype, "0", v))
                return "\n".join(lines) + "\n"
            ind = _row_loops(lines, shape, work, simd=False)
            pr = ExprPrinter(params, lines, ind + "  ")
            pr.count_uses(k.body)
            v = pr(k.body)
            lines.append(ind + "  " + _store(outp, k.out.dtype, _flat(shape, ivars), v))
            lines.append(ind + "}")
            return "\n".join(lines) + "\n"
        if _small_window(shape, red):
            # a pooling window: SIMD across the outputs' last dim, the few taps unrolled
            # inside (a SIMD loop over 3 taps does nothing; 16 outputs at once do)
            ind = _row_loops(lines, shape, work, simd=True)
            result = self._reduction(lines, ind + "  ", red, k.body, params, unrolled=True)
            lines.append(ind + "  " + _store(outp, k.out.dtype, _flat(shape, ivars), result))
            lines.append(ind + "}")
            return "\n".join(lines) + "\n"
        # reduction: parallel over outputs, serial (vectorizable) over the reduced dims
        if rank >= 1:
            lines.append(f"  #pragma omp parallel for collapse({rank}) if({work} > {PARALLEL_MIN})")
        for d in range(rank):
            lines.append(f"  {'  ' * d}for (int64_t i{d} = 0; i{d} < {c_dim(shape[d])}; i{d}++)")
        ind = "  " + "  " * rank
        lines.append(ind + "{")
        result = self._reduction(lines, ind + "  ", red, k.body, params)
        lines.append(ind + "  " + _store(outp, k.out.dtype, _flat(shape, ivars), result))
        lines.append(ind + "}")
        return "\n".join(lines) + "\n"

    def _reduction(self, lines, ind, red, body, params, unrolled=False) -> str:
        """Emit ``acc = reduce_r body`` at ``ind``; returns the C expression of the result.
        ``unrolled``: the reduced loops are unrolled inside a SIMD loop over outputs."""
        ct = compute_type(body.dtype)
        init = {"sum": "0", "prod": "1", "max": _lowest(body.dtype), "argmax": _lowest(body.dtype),
                "min": _highest(body.dtype)}[red.op]
        lines.append(f"{ind}{ct} acc = {init};")
        if red.op == "argmax":
            lines.append(f"{ind}int64_t acc_i = 0;")
        # max/min bind the value once: printed twice inside the select, gcc turned a masked
        # load (a pooling window at the image's edge, sizes unknown) into data-dependent branches
        # (max pool 3x3/2 on 64x112x112, symbolic sizes, random data, one-off C harness: 1240 -> 332 us)
        combine = {"sum": "acc += {v};", "prod": "acc *= {v};",
                   "max": f"{{{{ const {ct} _v = {{v}}; acc = _v > acc ? _v : acc; }}}}",
                   "min": f"{{{{ const {ct} _v = {{v}}; acc = _v < acc ? _v : acc; }}}}"}
        if unrolled:  # one block per tap with the tap's coordinates as constants: straight-line
            # code that gcc vectorizes across outputs (it will not with inner loops, pragmas or not)
            for tap in itertools.product(*(range(int(sz)) for sz in red.sizes)):
                lines.append(f"{ind}{{ const int64_t " + ", ".join(f"r{j} = {t}" for j, t in enumerate(tap)) + ";")
                pr = ExprPrinter(params, lines, ind + "  ")
                pr.count_uses(body)
                lines.append(ind + "  " + combine[red.op].format(v=pr(body)) + " }")
            return self._post(lines, ind, red, "acc", params)
        rind = ind
        for j, sz in enumerate(red.sizes):
            if j == len(red.sizes) - 1 and red.op in ("max", "min") and ct == "float":
                # without -ffinite-math-only gcc will not turn a float max/min into vmaxps on
                # its own (NaN rules); OpenMP's simd reduction allows it
                lines.append(f"{rind}#pragma omp simd reduction({red.op}:acc)")
            lines.append(f"{rind}for (int64_t r{j} = 0; r{j} < {c_dim(sz)}; r{j}++)")
            rind += "  "
        lines.append(rind[:-2] + "{" if red.sizes else rind + "{")
        inner = rind if red.sizes else rind + "  "
        pr = ExprPrinter(params, lines, inner)
        pr.count_uses(body)
        v = pr(body)
        combine = {"sum": f"acc += {v};", "prod": f"acc *= {v};",
                   "max": f"{{ const {ct} _v = {v}; acc = _v > acc ? _v : acc; }}",
                   "min": f"{{ const {ct} _v = {v}; acc = _v < acc ? _v : acc; }}",
                   "argmax": f"{{ const {ct} _v = {v}; if (_v > acc) {{ acc = _v; acc_i = "
                             f"{_flat(red.sizes, [f'r{j}' for j in range(len(red.sizes))])}; }} }}"}[red.op]
        lines.append(inner + combine)
        lines.append((rind[:-2] if red.sizes else rind) + "}")
        return self._post(lines, ind, red, "acc_i" if red.op == "argmax" else "acc", params)

    def _post(self, lines, ind, red, result, params) -> str:
        if red.post is not None:
            pp = ExprPrinter(params, lines, ind)
            pp.count_uses(red.post)
            result = pp(red.post)
        return result

    # -- row kernels: reductions over a row, then the store that uses them
    def _rows(self, k: RowKernel, params) -> str:
        lines: list[str] = []
        n, rows = len(k.shape), k.rows
        work = c_dim(prod(k.shape))
        if rows >= 1:
            lines.append(f"  #pragma omp parallel for collapse({rows}) if({work} > {PARALLEL_MIN})")
        for d in range(rows):
            lines.append(f"  {'  ' * d}for (int64_t i{d} = 0; i{d} < {c_dim(k.shape[d])}; i{d}++)")
        ind = "  " + "  " * rows
        lines.append(ind + "{")
        for st in k.stages:
            lines.append(f"{ind}  {compute_type(st.body.dtype)} {st.var};")
            lines.append(f"{ind}  {{")
            result = self._reduction(lines, ind + "    ", st.reduce, st.body, params)
            lines.append(f"{ind}    {st.var} = {result};")
            lines.append(f"{ind}  }}")
        sind = ind + "  "
        for d in range(rows, n):
            lines.append(f"{sind}for (int64_t i{d} = 0; i{d} < {c_dim(k.shape[d])}; i{d}++)")
            sind += "  "
        lines.append(sind[:-2] + "{" if n > rows else sind + "{")
        inner = sind if n > rows else sind + "  "
        pr = ExprPrinter(params, lines, inner)
        pr.count_uses(k.body)
        v = pr(k.body)
        lines.append(inner + _store(params[k.out], k.out.dtype, _flat(k.shape, [f"i{d}" for d in range(n)]), v))
        lines.append((sind[:-2] if n > rows else sind) + "}")
        lines.append(ind + "}")
        return "\n".join(lines) + "\n"

    # -- matmul template
    def _matmul(self, k: Matmul, params) -> str:
        from . import gemm
        if gemm.supports(k):
            return gemm.print_matmul(k, params, c_dim, self._epilogue_printer(k, params))
        if k.b.packed:
            raise EmberError(f"matmul {k.name}: a packed weight needs float32 operands")
        return self._matmul_simple(k, params)

    def _epilogue_printer(self, k: Matmul, params):
        """Prints the store of one GEMM result element, through the kernel's epilogue."""
        nb = len(k.batch)
        C = params[k.out]

        def lines(ind, acc_expr, i_name, j_name, out_index):
            if k.epilogue is None:
                return [f"{ind}{_store(C, k.out.dtype, out_index, acc_expr)}"]
            out = [f"{ind}{{ const int64_t i{nb} = {i_name}, i{nb + 1} = {j_name}; "
                   f"const float acc = {acc_expr};"]
            pr = ExprPrinter(params, out, ind + "  ")
            pr.count_uses(k.epilogue)
            v = pr(k.epilogue)
            out.append(f"{ind}  {_store(C, k.out.dtype, out_index, v)} }}")
            return out
        return lines

    def _matmul_simple(self, k: Matmul, params) -> str:
        nb = len(k.batch)
        A, B, C = params[k.a.buf], params[k.b.buf], params[k.out]
        M, N, K = c_dim(k.M), c_dim(k.N), c_dim(k.K)
        sa, sb = [c_dim(s) for s in k.a.strides], [c_dim(s) for s in k.b.strides]
        ct = compute_type(k.a.buf.dtype)  # the accumulator; the epilogue may store another dtype
        lines = [f"  const int64_t M = {M}, N = {N}, K = {K};",
                 f"  const int64_t nbatch = {c_dim(prod(k.batch))};"]
        axpy = k.b.strides[-1] == 1
        NB, MR = 256, 4
        if axpy:
            lines.append(f"  const int64_t ntile = (N + {NB - 1}) / {NB}, mtile = (M + {MR * 4 - 1}) / {MR * 4};")
            lines.append(f"  #pragma omp parallel for schedule(static) if(nbatch * M * N * K > {PARALLEL_MIN * 8})")
            lines.append("  for (int64_t t = 0; t < nbatch * mtile * ntile; t++) {")
            lines.append("    const int64_t bi = t / (mtile * ntile), mt = (t / ntile) % mtile, nt = t % ntile;")
        else:
            lines.append(f"  #pragma omp parallel for schedule(static) if(nbatch * M * N * K > {PARALLEL_MIN * 8})")
            lines.append("  for (int64_t t = 0; t < nbatch * M; t++) {")
            lines.append("    const int64_t bi = t / M, i = t % M;")
        # batch coordinates (i0..) and operand offsets
        rest = "bi"
        offa, offb = [c_dim(k.a.offset)], [c_dim(k.b.offset)]
        for d in reversed(range(nb)):
            lines.append(f"    const int64_t i{d} = ({rest}) % {c_dim(k.batch[d])};")
            rest = f"({rest}) / {c_dim(k.batch[d])}"
            offa.append(f"i{d} * {sa[d]}")
            offb.append(f"i{d} * {sb[d]}")
        lines.append(f"    const int64_t oa = {' + '.join(offa)}, ob = {' + '.join(offb)};")
        im, jn = f"i{nb}", f"i{nb + 1}"
        sam, sak, sbk, sbn = sa[nb], sa[nb + 1], sb[nb], sb[nb + 1]

        def epilogue(ind, acc_expr, i_name, j_name, lines_out):
            idx = f"(bi * M + {i_name}) * N + {j_name}"
            if k.epilogue is None:
                lines_out.append(f"{ind}{_store(C, k.out.dtype, idx, acc_expr)}")
                return
            lines_out.append(f"{ind}{{ const int64_t {im} = {i_name}, {jn} = {j_name}; "
                             f"const {ct} acc = {acc_expr};")
            pr = ExprPrinter(params, lines_out, ind + "  ")
            pr.count_uses(k.epilogue)
            v = pr(k.epilogue)
            lines_out.append(f"{ind}  {_store(C, k.out.dtype, idx, v)} }}")

        if axpy:
            # C[i, j0:j1] += A[i, k] * B[k, j0:j1], MR rows at a time: the inner loop over j
            # is unit-stride in B and C, so gcc turns it into FMA vectors
            lines.append(f"    const int64_t j0 = nt * {NB}, jn = ember_min64(N - j0, {NB});")
            lines.append(f"    const int64_t m0 = mt * {MR * 4}, m1 = ember_min64(M, m0 + {MR * 4});")
            lines.append(f"    for (int64_t i = m0; i < m1; i += {MR}) {{")
            lines.append(f"      const int64_t mr = ember_min64({MR}, m1 - i);")
            lines.append(f"      {ct} accs[{MR}][{NB}];")
            lines.append(f"      for (int r = 0; r < {MR}; r++) for (int64_t j = 0; j < {NB}; j++) accs[r][j] = 0;")
            lines.append("      if (mr == %d) {" % MR)
            lines.append("        for (int64_t kk = 0; kk < K; kk++) {")
            lines.append(f"          const {storage_type(k.b.buf.dtype)} *restrict brow = {B} + ob + kk * {sbk} + j0 * {sbn};")
            for r in range(MR):
                lines.append(f"          const {ct} a{r} = {A}[oa + (i + {r}) * {sam} + kk * {sak}];")
            lines.append("          for (int64_t j = 0; j < jn; j++) {")
            lines.append(f"            const {ct} bv = brow[j];")
            for r in range(MR):
                lines.append(f"            accs[{r}][j] += a{r} * bv;")
            lines.append("          }")
            lines.append("        }")
            lines.append("      } else {")
            lines.append("        for (int64_t r = 0; r < mr; r++)")
            lines.append("          for (int64_t kk = 0; kk < K; kk++) {")
            lines.append(f"            const {storage_type(k.b.buf.dtype)} *restrict brow = {B} + ob + kk * {sbk} + j0 * {sbn};")
            lines.append(f"            const {ct} a0 = {A}[oa + (i + r) * {sam} + kk * {sak}];")
            lines.append("            for (int64_t j = 0; j < jn; j++) accs[r][j] += a0 * brow[j];")
            lines.append("          }")
            lines.append("      }")
            lines.append("      for (int64_t r = 0; r < mr; r++)")
            lines.append("        for (int64_t j = 0; j < jn; j++)")
            epilogue("          ", "accs[r][j]", "(i + r)", "(j0 + j)", lines)
            lines.append("    }")
        else:
            # dot form: both operands unit-stride (or strided) along k
            lines.append("    for (int64_t j = 0; j < N; j++) {")
            lines.append(f"      {ct} sum = 0;")
            lines.append(f"      for (int64_t kk = 0; kk < K; kk++) sum += {A}[oa + i * {sam} + kk * {sak}] * "
                         f"{B}[ob + kk * {sbk} + j * {sbn}];")
            epilogue("      ", "sum", "i", "j", lines)
            lines.append("    }")
        lines.append("  }")
        return "\n".join(lines) + "\n"


_PARALLEL_FOR = re.compile(r"^(\s*)#pragma omp parallel for ((?:(?!\bif\().)*?)\s*(\bif\(.*\))?\s*$")


def spin_joined(body: str) -> str:
    """Each ``#pragma omp parallel for`` region of a kernel body, rewritten as a parallel region
    whose loop ends without a barrier (``nowait``) in ``ember_spin_join``: a thread that runs
    out of iterations spins there instead of sleeping in the region's closing barrier (JOIN_C).
    The loop statement runs to where its braces close (the printers brace every loop body)."""
    lines, out, i = body.split("\n"), [], 0
    while i < len(lines):
        m = _PARALLEL_FOR.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        ind, clauses, cond = m.group(1), m.group(2), m.group(3) or ""
        j, depth = i + 1, 0
        while True:
            depth += lines[j].count("{") - lines[j].count("}")
            j += 1
            if depth == 0 and "{" in "".join(lines[i + 1:j]):
                break
        out += [f"{ind}{{ int joined = 0;  /* ember_spin_join's count */", f"{ind}#pragma omp parallel {cond}".rstrip(),
                f"{ind}{{", f"{ind}#pragma omp for {clauses + ' ' if clauses else ''}nowait"]
        out += lines[i + 1:j] + [f"{ind}ember_spin_join(&joined);", f"{ind}}} }}"]
        i = j
    return "\n".join(out)


def _lowest(dt) -> str:
    if dt.is_float:
        return "(-INFINITY)"
    if dt is dtypes.bool_:
        return "false"
    return f"INT{dt.itemsize * 8}_MIN" if dt.is_signed else "0"


def _highest(dt) -> str:
    if dt.is_float:
        return "INFINITY"
    if dt is dtypes.bool_:
        return "true"
    return f"{'' if dt.is_signed else 'U'}INT{dt.itemsize * 8}_MAX"


def _row_loops(lines, shape, work, simd: bool) -> str:
    """Open the loops over ``shape``: the outer dims collapsed and parallel, the last one
    innermost (an ``omp simd`` loop where ``simd``); returns the indent of its body."""
    outer = len(shape) - 1
    par = f"if({work} > {PARALLEL_MIN})"
    if outer >= 1:
        lines.append(f"  #pragma omp parallel for collapse({outer}) {par}")
    for d in range(outer):
        lines.append(f"  {'  ' * d}for (int64_t i{d} = 0; i{d} < {c_dim(shape[d])}; i{d}++)")
    ind = "  " + "  " * outer
    if outer == 0 or simd:
        pragma = ("parallel for " if outer == 0 else "") + ("simd " if simd else "") + (par if outer == 0 else "")
        lines.append(f"{ind}#pragma omp {pragma.rstrip()}")
    lines.append(f"{ind}for (int64_t i{outer} = 0; i{outer} < {c_dim(shape[outer])}; i{outer}++) {{")
    return ind


SMALL_WINDOW = 32   # taps of a reduction unrolled inside a SIMD loop over outputs


def _small_window(shape, red) -> bool:
    """A 2-D (or deeper) reduction over a few static taps with at least 8 outputs along the
    last dim: pooling windows and depthwise convolutions, whose neighbouring outputs read
    neighbouring inputs. (A reduction over one axis, e.g. a row sum, keeps the SIMD loop
    over that axis, which is the contiguous one.)"""
    return (len(shape) >= 1 and red.op in ("sum", "max", "min") and len(red.sizes) >= 2
            and all(isinstance(s, int) for s in red.sizes) and prod(red.sizes) <= SMALL_WINDOW
            and (not isinstance(shape[-1], int) or shape[-1] >= 8))


def workspace_layout(prog: Program, plan=None):
    """Byte offset (a C expression) of each temp, and the workspace size.

    With a memory plan, temps in the same slot share an offset and the slot is as large as
    its largest member; without one, every temp gets its own room.
    """
    slots = plan.slots if plan is not None else [[t] for t in prog.temps]
    offsets, cur = {}, "0"
    for members in slots:
        sizes = [f"({c_dim(t.numel)} * {t.dtype.itemsize})" for t in members]
        size = sizes[0]
        for other in sizes[1:]:
            size = f"ember_max64({size}, {other})"
        for t in members:
            offsets[t] = cur
        cur = f"({cur} + (({size} + {ALIGN - 1}) / {ALIGN}) * {ALIGN})"
    return offsets, cur


def _c_buffer_name(b: Buffer) -> str:
    return {"input": "in", "output": "out", "const": "c", "temp": "t"}[b.kind] + str(b.index)


def profile_label(k, origins: dict) -> str:
    """``k2 gemm: linear %3 + gelu %4``: the kernel, its form and the graph nodes it computes."""
    if isinstance(k, Matmul):
        b = prod(k.batch)
        kind = f"gemm {'' if b == 1 else f'{b}x '}{k.M}x{k.N}x{k.K}"
    elif isinstance(k, Attention):
        kind = f"attention {prod(k.batch)}x{k.Sq}x{k.Sk}x{k.D}"
    elif isinstance(k, Template):
        kind = type(k).__name__.lower()
    elif isinstance(k, RowKernel):
        kind = "row"
    else:
        kind = "reduce" if k.reduce is not None else "pointwise"
    ops = origins.get(k.name, [])
    if len(ops) > 6:
        ops = ops[:5] + [f"... {len(ops) - 5} more"]
    text = f"{k.name} {kind}: {' + '.join(ops)}" if ops else f"{k.name} {kind}"
    return "".join(ch if " " <= ch <= "~" and ch not in "\\\"" else "?" for ch in text)


def _flops(k) -> str:
    """Multiply-adds x 2 of a GEMM-like kernel as a C expression of the dims; "0" if none."""
    if isinstance(k, Matmul):
        return f"2.0 * {c_dim(prod(k.batch))} * {c_dim(k.M)} * {c_dim(k.N)} * {c_dim(k.K)}"
    if isinstance(k, Attention):   # both products over every key (a causal mask skips about half)
        return f"2.0 * {c_dim(prod(k.batch))} * {c_dim(k.Sq)} * {c_dim(k.Sk)} * ({c_dim(k.D)} + {c_dim(k.Dv)})"
    return "0"


def _profile_c(prog: Program, calls) -> str:
    """Per-kernel timing for ``CompiledModel.profile`` (runtime/profile.py): while a buffer is
    set, ember_main adds each kernel call's wall time to its slot; otherwise one untaken
    branch per kernel. The labels and GEMM flops travel in the library, so saved artifacts
    can be profiled too."""
    n = len(calls)
    labels = ", ".join(f'"{profile_label(k, prog.origins)}"' for _, _, k in calls) or "0"
    syms = "".join(f"  const int64_t {c_sym(s)} = dims[{i}]; (void){c_sym(s)};\n" for i, s in enumerate(prog.symbols))
    flops = "".join(f"  f[{i}] = {_flops(k)};\n" for i, (_, _, k) in enumerate(calls))
    return f"""#include <time.h>
static double *ember_prof = 0;
void ember_set_profile(double *seconds) {{ ember_prof = seconds; }}
int ember_profile_count(void) {{ return {n}; }}
const char *ember_profile_label(int i) {{
  static const char *const labels[] = {{{labels}}};
  return i >= 0 && i < {n} ? labels[i] : 0;
}}
void ember_profile_flops(const int64_t *dims, double *f) {{
  (void)dims; (void)f;
{syms}{flops}}}
static inline double ember_prof_now(void) {{
  struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}}
/* the buffer is read once per kernel: another thread may turn profiling off meanwhile */
#define EMBER_TIMED(i, call) do {{ double *const prof_ = ember_prof; \\
    if (__builtin_expect(prof_ != 0, 0)) {{ const double t0_ = ember_prof_now(); call; \\
      prof_[i] += ember_prof_now() - t0_; }} else {{ call; }} }} while (0)"""


def generate(prog: Program, plan=None) -> str:
    """The C source for ``prog`` (``plan``: a MemoryPlan sharing workspace between temps)."""
    check_bf16_kernels(prog)
    kp = KernelPrinter(prog.symbols)
    calls = []
    for k in prog.kernels:
        fname, bufs = kp.kernel(k)
        calls.append((fname, bufs, k))
    offsets, total = workspace_layout(prog, plan)
    out = [PRELUDE]
    if any(isinstance(k, Matmul) for k in prog.kernels):
        from .gemm import prelude
        out.append(prelude())
    for kind in dict.fromkeys(type(k) for k in prog.kernels if isinstance(k, Template)):
        if kind in TEMPLATE_PRELUDES:
            out.append(TEMPLATE_PRELUDES[kind])
    # each kernel, and the entry points after them, begin a part that toolchain.build may
    # compile as a translation unit of its own (after the shared helpers above), in parallel
    for text, name in kp.funcs.items():
        out.append(f"{UNIT}\nEMBER_KERNEL void {name}{text}")
    protos = "\n".join(f"EMBER_KERNEL void {name}{text[:text.index('{')].rstrip()};" for text, name in kp.funcs.items())
    # the runtime sets the thread count once per model (threads= / EMBER_NUM_THREADS); the
    # entry point applies it to the calling thread, so two models in one process each keep theirs
    out.append(f"{UNIT}\n{protos}\n#include <omp.h>\nstatic int ember_threads = 0;\n"
               "void ember_set_num_threads(int n) { ember_threads = n; }\n" + _profile_c(prog, calls))
    body = ["int ember_main(const int64_t *dims, void *const *in, void *const *out, "
            "void *const *consts, char *ws) {",
            "  if (ember_threads > 0 && omp_get_max_threads() != ember_threads) omp_set_num_threads(ember_threads);"]
    needed = set()
    for _, bufs, _ in calls:
        needed.update(bufs)
    cname = _c_buffer_name
    syms = [f"  const int64_t {c_sym(s)} = dims[{k}];" for k, s in enumerate(prog.symbols)]
    body += syms
    for b in prog.inputs:
        if b in needed:
            body.append(f"  {storage_type(b.dtype)} *{cname(b)} = in[{b.index}];  /* {b.name} */")
    for b in prog.outputs:
        body.append(f"  {storage_type(b.dtype)} *{cname(b)} = out[{b.index}];")
    for b in prog.consts:
        if b in needed:
            body.append(f"  {storage_type(b.dtype)} *{cname(b)} = consts[{b.index}];  /* {b.name} */")
    for b in prog.temps:
        off = offsets[b]
        body.append(f"  {storage_type(b.dtype)} *{cname(b)} = ({storage_type(b.dtype)} *)(ws + {off});")
    for i, (fname, bufs, k) in enumerate(calls):
        args = ", ".join(cname(b) for b in bufs)
        body.append(f"  EMBER_TIMED({i}, {fname}(dims, {args}));  /* {k.name} */")
    body.append("  (void)dims; (void)in; (void)consts; (void)ws;")
    body.append("  return 0;\n}")
    out.append("\n".join(body))
    ws = ["int64_t ember_workspace_size(const int64_t *dims) {"]
    ws += syms
    ws.append(f"  return {total};\n}}")
    out.append("\n".join(ws))
    out.append("int ember_abi_version(void) { return EMBER_ABI; }")
    return "\n\n".join(out) + "\n"
