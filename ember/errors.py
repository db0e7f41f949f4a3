"""Every error Ember raises for a user's mistake derives from EmberError.

Each class is one failure kind; messages say what went wrong, where, and what to do.
"""
from __future__ import annotations


class EmberError(Exception):
    """Base of all user-facing Ember errors."""


class DTypeError(EmberError, TypeError):
    """A dtype Ember does not know or an input of the wrong dtype."""


class ShapeError(EmberError, ValueError):
    """Shapes that do not agree: an op's operands or a model's inputs."""


class InputError(EmberError, ValueError):
    """A call with the wrong number, names, shapes or dtypes of inputs."""


class IRError(EmberError):
    """A graph that breaks the IR's rules (found by the verifier)."""


class ParseError(EmberError, SyntaxError):
    """Text IR that cannot be parsed."""


class UnsupportedOpError(EmberError, NotImplementedError):
    """A model uses ops Ember cannot import.

    ``unsupported`` lists every offending op with its node name and source line, so a user
    sees them all at once rather than one per attempt.
    """

    def __init__(self, unsupported: list[dict], framework: str = "torch"):
        self.unsupported = unsupported
        lines = []
        for u in unsupported:
            where = f" at {u['source']}" if u.get("source") else ""
            lines.append(f"  - {u['op']} (node {u['node']}){where}")
        ops = sorted({u["op"] for u in unsupported})
        super().__init__(
            f"{len(unsupported)} unsupported {framework} op node(s) "
            f"({', '.join(ops)}):\n" + "\n".join(lines) +
            "\nRewrite these parts of the model with supported ops, or file an issue naming the op.")


class CompilerNotFoundError(EmberError, RuntimeError):
    """No C compiler on PATH (or $CC points at nothing)."""


class CompileError(EmberError, RuntimeError):
    """The C compiler rejected generated code (a bug in Ember: please report it)."""


class ExportError(EmberError, RuntimeError):
    """The source framework could not export the model."""


class ArtifactError(EmberError, RuntimeError):
    """A saved model that cannot be used here: corrupted or changed files, another Ember
    version, or a library built for CPU features this machine lacks. The message says which
    and whether ``ember.load(path, rebuild=True)`` can fix it."""


class OnnxError(EmberError, ValueError):
    """An ONNX model that cannot be read or is malformed (truncated, cyclic, dangling names)."""


class VerificationError(EmberError, AssertionError):
    """A pass changed what the graph computes (found by verify mode); names the pass."""


class QuantizationError(EmberError, ValueError):
    """A quantization request Ember cannot honour: an unknown option, calibration data that
    does not fit the model (wrong count, shape or dtype of inputs), or an empty calibration
    set. The message names the batch and input at fault."""


class CalibrationError(QuantizationError):
    """Calibration batches that are empty or do not match the model's inputs."""
