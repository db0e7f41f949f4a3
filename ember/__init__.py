"""Ember: compile PyTorch, HuggingFace and ONNX models to native code.

>>> import ember
>>> compiled = ember.compile(model, (x,))   # then compiled(x) runs native code
"""
__version__ = "0.1.0"

from .errors import (CompileError, CompilerNotFoundError, DTypeError, EmberError,  # noqa: F401
                     ExportError, InputError, IRError, ParseError, ShapeError, UnsupportedOpError)

from .api import CompiledModel, InferenceEngine, compile, load  # noqa: E402,F401
from . import quant  # noqa: E402,F401  (ember.quant.static / dynamic)

__all__ = ["CompiledModel", "EmberError", "InferenceEngine", "UnsupportedOpError", "compile",
           "load", "__version__"]
