"""Element types: one table mapping Ember's names to numpy and C."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str        # short name used in the text IR: f32, i64, ...
    np_name: str     # numpy dtype name (bf16 has none; it is stored widened, see below)
    c_name: str      # C type used by the CPU backend
    itemsize: int
    is_float: bool
    is_signed: bool = True

    @property
    def np(self) -> np.dtype:
        return np.dtype(self.np_name)

    def __repr__(self) -> str:
        return self.name

    def __str__(self) -> str:
        return self.name


f64 = DType("f64", "float64", "double", 8, True)
f32 = DType("f32", "float32", "float", 4, True)
f16 = DType("f16", "float16", "_Float16", 2, True)
# numpy has no bfloat16; the reference computes bf16 values in float32 after rounding.
bf16 = DType("bf16", "float32", "__bf16", 2, True)
i64 = DType("i64", "int64", "int64_t", 8, False)
i32 = DType("i32", "int32", "int32_t", 4, False)
i16 = DType("i16", "int16", "int16_t", 2, False)
i8 = DType("i8", "int8", "int8_t", 1, False)
u8 = DType("u8", "uint8", "uint8_t", 1, False, is_signed=False)
bool_ = DType("bool", "bool", "bool", 1, False, is_signed=False)

ALL = (f64, f32, f16, bf16, i64, i32, i16, i8, u8, bool_)
BY_NAME = {d.name: d for d in ALL}
_BY_NUMPY = {np.dtype(d.np_name): d for d in ALL if d is not bf16}


def from_numpy(dt) -> DType:
    """The Ember dtype for a numpy dtype (float32 -> f32)."""
    try:
        return _BY_NUMPY[np.dtype(dt)]
    except KeyError:
        from ..errors import DTypeError
        raise DTypeError(f"numpy dtype {np.dtype(dt)} has no Ember equivalent; "
                         f"supported: {', '.join(str(k) for k in _BY_NUMPY)}") from None


def parse(name: str) -> DType:
    try:
        return BY_NAME[name]
    except KeyError:
        from ..errors import DTypeError
        raise DTypeError(f"unknown dtype {name!r}; known: {', '.join(BY_NAME)}") from None
