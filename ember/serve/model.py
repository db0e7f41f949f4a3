"""One served model's face to the protocol: metadata, and request checks (names, dtypes,
shapes) that answer 400 with a message naming the input. Shared by the FastAPI app and the
Ray Serve deployment."""
from __future__ import annotations

import numpy as np

from ..errors import EmberError
from . import protocol
from .protocol import RequestError


class ModelFront:
    """A compiled model behind a name: its v2 metadata, and requests checked against it.

    >>> front = ModelFront("mlp", ember.load("mlp.ember"))
    >>> arrays = front.arrays(protocol.parse_infer(body))   # RequestError (400) if they do not fit
    """

    def __init__(self, name: str, model):
        self.name, self.model = name, model
        self.inputs, self.outputs = list(model.inputs), list(model.outputs)
        self._np = {s.name: protocol.V2_NP[protocol.TO_V2[s.dtype]] for s in self.inputs}
        self.metadata = protocol.model_metadata(name, self.inputs, self.outputs)

    def arrays(self, req: protocol.InferRequest) -> list[np.ndarray]:
        """Inputs in the model's order, checked for names, dtypes and shapes (400 otherwise)."""
        names = [s.name for s in self.inputs]
        unknown = [n for n in req.inputs if n not in names]
        if unknown:
            raise RequestError(f"model {self.name!r} has no input {unknown[0]!r}; its inputs are "
                               f"{', '.join(names)}")
        missing = [n for n in names if n not in req.inputs]
        if missing:
            raise RequestError(f"missing input {missing[0]!r} for model {self.name!r}")
        arrays = []
        for s in self.inputs:
            a = req.inputs[s.name]
            if a.dtype != self._np[s.name]:
                raise RequestError(f"input {s.name!r}: expected datatype {protocol.TO_V2[s.dtype]}, "
                                   f"got {protocol.TO_V2.get(_dtype_name(a.dtype), a.dtype.name)}")
            arrays.append(a)
        try:
            self.model.native.bind([a.shape for a in arrays])
        except EmberError as e:
            raise RequestError(str(e)) from None
        if req.outputs is not None:
            out_names = [s.name for s in self.outputs]
            for n in req.outputs:
                if n not in out_names:
                    raise RequestError(f"model {self.name!r} has no output {n!r}; its outputs are "
                                       f"{', '.join(out_names)}")
        return arrays

    def outputs_for(self, req: protocol.InferRequest, outs) -> list[tuple[str, np.ndarray]]:
        """(name, array) pairs of the outputs the request asked for (all by default)."""
        return [(s.name, o) for s, o in zip(self.outputs, outs)
                if req.outputs is None or s.name in req.outputs]


def _dtype_name(dt) -> str:
    try:
        return protocol._ember_name(dt)
    except KeyError:
        return dt.name
