"""The op registry: each op declares attributes, type inference and numpy reference.

The reference implementation *is* the meaning of the op (DESIGN principle 1): every
frontend, pass and backend is tested against it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ...errors import IRError, ShapeError
from ..dtypes import DType
from ..symbolic import Dim, SymExpr

REQUIRED = object()

# Attribute kinds, used to check attrs and to parse them from text.
ATTR_KINDS = ("int", "float", "bool", "str", "ints", "dims", "dim", "dtype", "floats")


@dataclass(frozen=True)
class Attr:
    kind: str
    default: Any = REQUIRED
    optional: bool = False  # None is allowed


@dataclass
class OpDef:
    name: str
    infer: Callable[[list, dict], list]          # input TensorTypes, attrs -> output TensorTypes
    ref: Callable[[list, dict], Any]             # numpy arrays, concrete attrs -> array or list
    attrs: dict[str, Attr] = field(default_factory=dict)
    arity: tuple[int, int | None] = (1, 1)       # min, max inputs (None: variadic)
    category: str = "other"                      # elementwise | reduce | shape | nn | creation
    doc: str = ""

    def check_attrs(self, attrs: dict) -> dict:
        out = {}
        for k in attrs:
            if k not in self.attrs:
                raise IRError(f"op {self.name!r} has no attribute {k!r}; "
                              f"it takes {sorted(self.attrs) or 'none'}")
        for k, spec in self.attrs.items():
            if k in attrs:
                out[k] = _coerce(self.name, k, spec, attrs[k])
            elif spec.default is REQUIRED:
                raise IRError(f"op {self.name!r} needs attribute {k!r}")
            else:
                out[k] = spec.default
        return out

    def check_arity(self, n: int, where: str = "") -> None:
        lo, hi = self.arity
        if n < lo or (hi is not None and n > hi):
            want = f"{lo}" if lo == hi else f"{lo}..{hi if hi is not None else 'n'}"
            raise IRError(f"{where}op {self.name!r} takes {want} inputs, got {n}")


def _coerce(op, k, spec: Attr, v):
    if v is None:
        if spec.optional:
            return None
        raise IRError(f"op {op!r} attribute {k!r} may not be None")
    kind = spec.kind
    try:
        if kind == "int":
            return int(v)
        if kind == "float":
            return float(v)
        if kind == "bool":
            return bool(v)
        if kind == "str":
            return str(v)
        if kind == "ints":
            return tuple(int(x) for x in v)
        if kind == "floats":
            return tuple(float(x) for x in v)
        if kind == "dims":
            return tuple(x if isinstance(x, SymExpr) else int(x) for x in v)
        if kind == "dim":
            return v if isinstance(v, SymExpr) else int(v)
        if kind == "dtype":
            if not isinstance(v, DType):
                raise TypeError
            return v
    except (TypeError, ValueError):
        raise IRError(f"op {op!r} attribute {k!r} must be {kind}, got {v!r}") from None
    raise IRError(f"unknown attribute kind {kind}")


_REGISTRY: dict[str, OpDef] = {}


def register(name, infer, ref, attrs=None, arity=(1, 1), category="other", doc=""):
    if name in _REGISTRY:
        raise ValueError(f"op {name} registered twice")
    _REGISTRY[name] = OpDef(name, infer, ref, attrs or {}, arity, category, doc)
    return _REGISTRY[name]


def get(name: str) -> OpDef:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise IRError(f"unknown op {name!r}") from None


def all_ops() -> dict[str, OpDef]:
    return dict(_REGISTRY)


# -- shared inference helpers

def broadcast_shapes(*shapes: tuple[Dim, ...]) -> tuple[Dim, ...]:
    """Numpy broadcasting over possibly symbolic dims; mismatches raise ShapeError."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for i in range(rank):
        d: Dim = 1
        for s in shapes:
            k = i - (rank - len(s))
            if k < 0:
                continue
            e = s[k]
            if e == 1:
                continue
            if d == 1:
                d = e
            elif d != e:
                raise ShapeError(f"shapes {', '.join(_fmt_shape(s) for s in shapes)} "
                                 f"do not broadcast (dim {i}: {d} vs {e})")
        out.append(d)
    return tuple(out)


def _fmt_shape(s) -> str:
    return "[" + ", ".join(str(d) for d in s) + "]"


def norm_axis(axis: int, rank: int, op: str = "") -> int:
    if not -max(rank, 1) <= axis < max(rank, 1):
        raise ShapeError(f"{op}: axis {axis} out of range for rank {rank}")
    return axis % max(rank, 1)


def same_dtype(op: str, types) -> DType:
    dts = {t.dtype for t in types}
    if len(dts) != 1:
        raise IRError(f"op {op!r} needs operands of one dtype, got {', '.join(sorted(map(str, dts)))}")
    return next(iter(dts))
