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
        if self.np_name == "bfloat16":
            return _bfloat16()
        return np.dtype(self.np_name)

    def __repr__(self) -> str:
        return self.name

    def __str__(self) -> str:
        return self.name


f64 = DType("f64", "float64", "double", 8, True)
f32 = DType("f32", "float32", "float", 4, True)
f16 = DType("f16", "float16", "_Float16", 2, True)
# bfloat16: numpy has no such type; arrays use ml_dtypes.bfloat16 (the type ONNX and JAX
# use; ml_dtypes comes with onnx), imported only when a bf16 array is needed. The CPU
# backend stores the 16 bits and computes in float (backends/cpu/codegen.py).
bf16 = DType("bf16", "bfloat16", "ember_bf16", 2, True)
i64 = DType("i64", "int64", "int64_t", 8, False)
i32 = DType("i32", "int32", "int32_t", 4, False)
i16 = DType("i16", "int16", "int16_t", 2, False)
i8 = DType("i8", "int8", "int8_t", 1, False)
u64 = DType("u64", "uint64", "uint64_t", 8, False, is_signed=False)
u32 = DType("u32", "uint32", "uint32_t", 4, False, is_signed=False)
u16 = DType("u16", "uint16", "uint16_t", 2, False, is_signed=False)
u8 = DType("u8", "uint8", "uint8_t", 1, False, is_signed=False)
bool_ = DType("bool", "bool", "bool", 1, False, is_signed=False)

ALL = (f64, f32, f16, bf16, i64, i32, i16, i8, u64, u32, u16, u8, bool_)
BY_NAME = {d.name: d for d in ALL}
_BY_NUMPY = {np.dtype(d.np_name): d for d in ALL if d is not bf16}


def _bfloat16() -> np.dtype:
    try:
        import ml_dtypes
    except ModuleNotFoundError:
        from ..errors import DTypeError
        raise DTypeError("bf16 tensors need the ml_dtypes package for their numpy arrays "
                         "(pip install ml_dtypes), or cast the model to float32") from None
    return np.dtype(ml_dtypes.bfloat16)


def np_is_float(dt) -> bool:
    """Whether a numpy dtype holds floating-point values (ml_dtypes.bfloat16 included, which
    numpy itself reports as kind 'V')."""
    dt = np.dtype(dt)
    return dt.kind in "fc" or dt.name == "bfloat16"


def from_numpy(dt) -> DType:
    """The Ember dtype for a numpy dtype (float32 -> f32; ml_dtypes.bfloat16 -> bf16)."""
    dt = np.dtype(dt)
    if dt.name == "bfloat16":
        return bf16
    try:
        return _BY_NUMPY[dt]
    except KeyError:
        from ..errors import DTypeError
        raise DTypeError(f"numpy dtype {dt} has no Ember equivalent; supported: "
                         f"{', '.join(str(k) for k in _BY_NUMPY)}, bfloat16 (ml_dtypes)") from None


def parse(name: str) -> DType:
    try:
        return BY_NAME[name]
    except KeyError:
        from ..errors import DTypeError
        raise DTypeError(f"unknown dtype {name!r}; known: {', '.join(BY_NAME)}") from None
