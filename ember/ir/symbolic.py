"""Symbolic dimensions.

A dimension is a Python ``int`` or a ``SymExpr``: a polynomial with integer coefficients over
atoms, where an atom is a symbol name (``"batch"``) or an opaque ``a // b`` / ``a % b`` that
could not be simplified. Results that turn out constant collapse back to ``int``, so code can
treat ``Dim`` values like ints (``d * 2``, ``d == 3``) without caring which it has.

Only what shape inference needs: +, -, *, exact division, floor division, modulo,
evaluation with bound symbols, printing as text and as C. The runtime evaluates printed
expressions with its own tiny evaluator, so this module stays a compile-time helper.
"""
from __future__ import annotations

import ast
from math import gcd
from typing import Union

Dim = Union[int, "SymExpr"]


class _Atom:
    """An opaque sub-expression: a symbol, or floordiv/mod that did not simplify."""
    __slots__ = ("kind", "args", "_key")

    def __init__(self, kind: str, args: tuple):
        self.kind, self.args = kind, args
        if kind == "sym":
            self._key = args[0]
        else:
            op = "//" if kind == "floordiv" else "%"
            self._key = f"({_paren(args[0])} {op} {_paren(args[1])})"

    def __eq__(self, other):
        return isinstance(other, _Atom) and self._key == other._key

    def __hash__(self):
        return hash(self._key)

    def __lt__(self, other):
        return self._key < other._key

    def __str__(self):
        return self._key

    def eval(self, env):
        if self.kind == "sym":
            try:
                return env[self.args[0]]
            except KeyError:
                raise KeyError(f"symbol {self.args[0]!r} is not bound") from None
        a, b = evaluate(self.args[0], env), evaluate(self.args[1], env)
        return a // b if self.kind == "floordiv" else a % b


class SymExpr:
    """An integer polynomial over atoms; build with ``sym("batch")`` and arithmetic."""
    __slots__ = ("terms", "_hash")

    def __init__(self, terms: dict):
        # terms: monomial (sorted tuple of atoms, repeated for powers) -> nonzero int coefficient
        self.terms = terms
        self._hash = hash(frozenset(terms.items()))

    # -- construction helpers
    @staticmethod
    def _of(x) -> "SymExpr":
        if isinstance(x, SymExpr):
            return x
        if isinstance(x, (int,)) or hasattr(x, "__index__"):
            x = int(x)
            return SymExpr({(): x} if x else {})
        raise TypeError(f"not a dimension: {x!r}")

    def _binop(self, other, fn):
        try:
            o = SymExpr._of(other)
        except TypeError:
            return NotImplemented
        return fn(self, o)

    def __add__(self, o):
        return self._binop(o, _add)

    __radd__ = __add__

    def __sub__(self, o):
        return self._binop(o, lambda a, b: _add(a, _scale(b, -1)))

    def __rsub__(self, o):
        return self._binop(o, lambda a, b: _add(b, _scale(a, -1)))

    def __neg__(self):
        return normalize(_scale(self, -1).terms)

    def __mul__(self, o):
        return self._binop(o, _mul)

    __rmul__ = __mul__

    def __floordiv__(self, o):
        return floordiv(self, o)

    def __rfloordiv__(self, o):
        return floordiv(o, self)

    def __mod__(self, o):
        return mod(self, o)

    def __rmod__(self, o):
        return mod(o, self)

    def __eq__(self, other):
        if isinstance(other, SymExpr):
            return self.terms == other.terms
        return False  # normalized: a SymExpr is never a plain constant

    def __hash__(self):
        return self._hash

    def __index__(self):
        raise TypeError(f"symbolic dimension {self} has no concrete value here")

    def __repr__(self):
        return f"SymExpr({self})"

    def __str__(self):
        return _fmt(self)

    @property
    def free_symbols(self) -> set[str]:
        out = set()
        for mono in self.terms:
            for atom in mono:
                if atom.kind == "sym":
                    out.add(atom.args[0])
                else:
                    for a in atom.args:
                        out |= free_symbols(a)
        return out


def _add(a: SymExpr, b: SymExpr):
    t = dict(a.terms)
    for m, c in b.terms.items():
        v = t.get(m, 0) + c
        if v:
            t[m] = v
        else:
            t.pop(m, None)
    return normalize(t)


def _scale(a: SymExpr, k: int) -> SymExpr:
    return SymExpr({m: c * k for m, c in a.terms.items()} if k else {})


def _mul(a: SymExpr, b: SymExpr):
    t: dict = {}
    for m1, c1 in a.terms.items():
        for m2, c2 in b.terms.items():
            m = tuple(sorted(m1 + m2))
            v = t.get(m, 0) + c1 * c2
            if v:
                t[m] = v
            else:
                t.pop(m, None)
    return normalize(t)


def normalize(terms: dict) -> Dim:
    if not terms:
        return 0
    if list(terms) == [()]:
        return terms[()]
    return SymExpr(terms)


def sym(name: str) -> SymExpr:
    """A fresh symbolic dimension named ``name``."""
    if not name.isidentifier():
        raise ValueError(f"symbol name must be an identifier, got {name!r}")
    return SymExpr({(_Atom("sym", (name,)),): 1})


def is_symbolic(d) -> bool:
    return isinstance(d, SymExpr)


def free_symbols(d) -> set[str]:
    return d.free_symbols if isinstance(d, SymExpr) else set()


def _divide_exact(a: SymExpr, b: SymExpr):
    """a / b when b is one monomial dividing every term of a, else None."""
    if len(b.terms) != 1:
        return None
    (bm, bc), = b.terms.items()
    out = {}
    for m, c in a.terms.items():
        rest = list(m)
        for atom in bm:
            if atom not in rest:
                return None
            rest.remove(atom)
        if c % bc:
            return None
        out[tuple(rest)] = c // bc
    return normalize(out)


def floordiv(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a // b
    if b == 1:
        return a
    if a == b:
        return 1
    if a == 0:
        return 0
    q = _divide_exact(SymExpr._of(a), SymExpr._of(b))
    if q is not None:
        return q
    whole, rest = _split_multiple(a, b)
    if whole is not None:  # (b*Q + R) // b = Q + R // b: (h - 4) // 4 + 1 is h // 4
        return whole + floordiv(rest, b)
    if isinstance(a, SymExpr) and isinstance(b, int) and b > 0 and len(a.terms) == 1:
        (m, c), = a.terms.items()
        if c == 1 and len(m) == 1 and m[0].kind == "floordiv" and isinstance(m[0].args[1], int) \
                and m[0].args[1] > 0:  # (x // p) // q = x // (p*q) for positive p, q
            return floordiv(m[0].args[0], m[0].args[1] * b)
    return SymExpr({(_Atom("floordiv", (a, b)),): 1})


def _split_multiple(a: Dim, b: Dim):
    """(Q, R) with a = b*Q + R, Q the terms whose coefficients b divides; (None, a) if none."""
    if not (isinstance(a, SymExpr) and isinstance(b, int) and b > 0):
        return None, a
    whole, rest = {}, {}
    for m, c in a.terms.items():
        q, r = divmod(c, b)
        if q:
            whole[m] = q
        if r:
            rest[m] = r
    if not whole:
        return None, a
    return normalize(whole), normalize(rest)


def mod(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a % b
    if b == 1 or a == b or a == 0:
        return 0
    if _divide_exact(SymExpr._of(a), SymExpr._of(b)) is not None:
        return 0
    whole, rest = _split_multiple(a, b)
    if whole is not None:  # (b*Q + R) % b = R % b
        return mod(rest, b)
    return SymExpr({(_Atom("mod", (a, b)),): 1})


def evaluate(d: Dim, env: dict) -> int:
    """Concrete value of ``d`` with symbols bound by ``env`` (name -> int)."""
    if isinstance(d, int):
        return d
    total = 0
    for m, c in d.terms.items():
        v = c
        for atom in m:
            v *= atom.eval(env)
        total += v
    return total


def _paren(d: Dim) -> str:
    s = _fmt(d)
    return f"({s})" if " " in s or s.startswith("-") else s


def _fmt_mono(m, c) -> str:
    parts = [str(a) for a in m]
    if c != 1 or not parts:
        parts.insert(0, str(c))
    return "*".join(parts)


def _fmt(d: Dim) -> str:
    if isinstance(d, int):
        return str(d)
    # highest degree first, constant last; stable by name
    items = sorted(d.terms.items(), key=lambda mc: (-len(mc[0]), [str(a) for a in mc[0]]))
    s = ""
    for m, c in items:
        if not s:
            s = _fmt_mono(m, c) if c > 0 or not m else "-" + _fmt_mono(m, -c)
        elif c < 0:
            s += " - " + _fmt_mono(m, -c)
        else:
            s += " + " + _fmt_mono(m, c)
    return s


def to_c(d: Dim, sym_to_c) -> str:
    """C expression (int64 arithmetic) for ``d``; ``sym_to_c(name)`` names each symbol.

    Dims are never negative, so C's truncating division agrees with floor division.
    """
    if isinstance(d, int):
        return f"{d}L" if abs(d) > 2**31 - 1 else str(d)
    parts = []
    for m, c in d.terms.items():
        factors = []
        for atom in m:
            if atom.kind == "sym":
                factors.append(sym_to_c(atom.args[0]))
            else:
                op = "/" if atom.kind == "floordiv" else "%"
                factors.append(f"({to_c(atom.args[0], sym_to_c)} {op} {to_c(atom.args[1], sym_to_c)})")
        if c != 1 or not factors:
            factors.insert(0, str(c))
        parts.append("*".join(factors))
    return "(" + " + ".join(parts) + ")"


def parse_dim(text: str) -> Dim:
    """Parse ``"batch*seq + 1"`` back into a Dim (the inverse of ``str``)."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"bad dimension expression {text!r}") from e

    def walk(n):
        if isinstance(n, ast.Constant) and isinstance(n.value, int):
            return n.value
        if isinstance(n, ast.Name):
            return sym(n.id)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -walk(n.operand)
        if isinstance(n, ast.BinOp):
            a, b = walk(n.left), walk(n.right)
            ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
                   ast.FloorDiv: lambda: floordiv(a, b), ast.Mod: lambda: mod(a, b)}
            if type(n.op) in ops:
                return ops[type(n.op)]()
        raise ValueError(f"bad dimension expression {text!r}")
    return walk(tree)


def prod(dims) -> Dim:
    out: Dim = 1
    for d in dims:
        out = out * d
    return out


def gcd_dim(d: Dim) -> int:
    """Largest int known to divide ``d`` (used for alignment facts)."""
    if isinstance(d, int):
        return abs(d) or 1
    g = 0
    for c in d.terms.values():
        g = gcd(g, c)
    return g or 1
