"""INT8 quantization: observers, calibration, the rewrite to int8 ops, the accuracy report.

>>> q = ember.compile(model, (x,), quantize="dynamic")
>>> q = ember.compile(model, (x,), quantize=ember.quant.static(batches, observer="percentile"))
>>> print(q.quant_report)

See docs/quantization.md.
"""
from .config import QUANTIZABLE_OPS, QuantConfig, dynamic, static  # noqa: F401
from .observers import OBSERVERS, Observer, qparams  # noqa: F401
from .quantize import QuantizationWarning, quantize_graph, quantize_weight  # noqa: F401
from .report import LayerReport, QuantReport

__all__ = [
           "OBSERVERS",
           "LayerReport",
           "Observer",
           "QuantConfig",
           "QuantReport",
           "QuantizationWarning",
           "dynamic",
           "quantize_graph",
           "static",
]
