"""What the user asks for: ``ember.quant.dynamic(...)`` and ``ember.quant.static(...)``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import CalibrationError, QuantizationError
from .observers import OBSERVERS

QUANTIZABLE_OPS = ("linear", "matmul", "conv2d")


@dataclass
class QuantConfig:
    mode: str                                  # "dynamic" | "static"
    calibration: list | None = None            # static: the calibration batches
    observer: str = "minmax"
    percentile: float = 99.99
    per_row: bool = True                       # dynamic: one activation scale per row
    activation_dtype: str = "u8"               # u8: asymmetric; i8: symmetric
    reduce_range: bool = True                  # dynamic u8: 7-bit codes (the fast exact int8 GEMM)
    ops: tuple = QUANTIZABLE_OPS
    skip_ops: tuple = ()
    skip_nodes: tuple = ()                     # node names or fnmatch patterns
    min_cosine: float | None = None            # the accuracy guard's budget
    eval_data: Any = None                      # batches for the guard / report (default: see docs)
    max_eval_batches: int = 8
    force: bool = False                        # keep int8 even when it is slower than fp32
    check_speed: bool = True
    extra: dict = field(default_factory=dict)


def _common(ops, skip_ops, skip_nodes, min_cosine, activation_dtype, force, check_speed):
    ops = tuple(ops)
    bad = [o for o in ops + tuple(skip_ops) if o not in QUANTIZABLE_OPS]
    if bad:
        raise QuantizationError(f"cannot quantize op(s) {', '.join(map(repr, bad))}; "
                                f"quantizable ops are {', '.join(QUANTIZABLE_OPS)}")
    if activation_dtype not in ("u8", "i8"):
        raise QuantizationError(f"activation_dtype must be 'u8' (asymmetric) or 'i8' (symmetric), "
                                f"got {activation_dtype!r}")
    if min_cosine is not None and not 0.0 < float(min_cosine) <= 1.0:
        raise QuantizationError(f"min_cosine must be in (0, 1], got {min_cosine}")
    if isinstance(skip_nodes, str):
        skip_nodes = (skip_nodes,)
    return {"ops": ops, "skip_ops": tuple(skip_ops), "skip_nodes": tuple(skip_nodes),
                "min_cosine": None if min_cosine is None else float(min_cosine),
                "activation_dtype": activation_dtype, "force": bool(force), "check_speed": bool(check_speed)}


def dynamic(*, per_row: bool = True, activation_dtype: str = "u8", reduce_range: bool = True,
            ops=("linear", "matmul"), skip_ops=(), skip_nodes=(), min_cosine: float | None = None,
            eval_data=None, force: bool = False, check_speed: bool = True) -> QuantConfig:
    """Dynamic quantization: int8 weights (per output channel, symmetric), activations
    quantized at run time from their own range, per row (default) or per tensor.

    ``min_cosine`` turns on the accuracy guard (measured on ``eval_data``, default the example
    inputs). ``force=True`` keeps int8 even where Ember measures it slower than fp32.
    ``reduce_range`` (u8 activations): 7-bit codes in [0, 127], which lets the int8 GEMM use
    AVX2's u8 x s8 multiply-add with no possible saturation (about 1.3x faster than the exact
    int16 route that full 8-bit codes need); False keeps 8 bits for the last bit of accuracy.
    """
    return QuantConfig("dynamic", per_row=bool(per_row), eval_data=eval_data, reduce_range=bool(reduce_range),
                       **_common(ops, skip_ops, skip_nodes, min_cosine, activation_dtype, force, check_speed))


def static(calibration_batches, *, observer: str = "minmax", percentile: float = 99.99,
           activation_dtype: str = "u8", ops=QUANTIZABLE_OPS, skip_ops=(), skip_nodes=(),
           min_cosine: float | None = None, max_eval_batches: int = 8, force: bool = False,
           check_speed: bool = True) -> QuantConfig:
    """Static post-training quantization: activation ranges are learnt once by running
    ``calibration_batches`` (each a tuple of inputs in the model's order, a dict by input name,
    or one array for a one-input model) through the reference interpreter; scales are then fixed.

    ``observer``: "minmax", "percentile" (with ``percentile``), "mse" or "entropy".
    """
    if observer not in OBSERVERS:
        raise QuantizationError(f"unknown observer {observer!r}; choose one of {', '.join(OBSERVERS)}")
    if calibration_batches is None:
        raise CalibrationError("static quantization needs calibration batches: "
                               "ember.quant.static([batch1, batch2, ...])")
    try:
        batches = list(calibration_batches)
    except TypeError:
        raise CalibrationError("calibration_batches must be a list (or iterable) of input batches, got "
                               f"{type(calibration_batches).__name__}") from None
    if not batches:
        raise CalibrationError("the calibration set is empty: pass at least one batch of inputs "
                               "(a few dozen representative samples are typical)")
    return QuantConfig("static", calibration=batches, observer=observer, percentile=percentile,
                       max_eval_batches=int(max_eval_batches),
                       **_common(ops, skip_ops, skip_nodes, min_cosine, activation_dtype, force, check_speed))


def normalize(q) -> QuantConfig:
    if isinstance(q, QuantConfig):
        return q
    if q == "dynamic":
        return dynamic()
    if q == "static":
        raise CalibrationError("quantize='static' needs calibration data: "
                               "quantize=ember.quant.static(calibration_batches)")
    raise QuantizationError(f"quantize must be 'dynamic', ember.quant.dynamic(...) or "
                            f"ember.quant.static(batches), got {q!r}")
