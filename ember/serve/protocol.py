"""The Open Inference Protocol (KServe v2) on the wire: requests to numpy arrays, numpy
arrays to responses, with the JSON form and the binary-data extension.

Pure functions over bytes and arrays; the web framework lives in app.py. Every problem with
a request raises ``RequestError`` with the HTTP status and a message that names the input.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

# Ember dtype name <-> v2 datatype. BYTES (strings) has no Ember counterpart.
TO_V2 = {"bool": "BOOL", "u8": "UINT8", "u16": "UINT16", "u32": "UINT32", "u64": "UINT64",
         "i8": "INT8", "i16": "INT16", "i32": "INT32", "i64": "INT64", "f16": "FP16", "f32": "FP32",
         "f64": "FP64", "bf16": "BF16"}
V2_NP = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
         "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
         "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
try:  # BF16 tensors are ml_dtypes.bfloat16 arrays (ember/ir/dtypes.py)
    import ml_dtypes
    V2_NP["BF16"] = ml_dtypes.bfloat16
except ModuleNotFoundError:
    pass
HEADER_LENGTH = "inference-header-content-length"  # the binary extension's HTTP header


class RequestError(Exception):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    id: str | None = None
    binary_outputs: set[str] = field(default_factory=set)   # output names to send as binary
    outputs: list[str] | None = None                        # requested outputs (None: all)


def _json(raw: bytes, what: str):
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise RequestError(f"{what} is not valid JSON: {e}") from None


def _to_array(name: str, v2type: str, data, shape: list[int]) -> np.ndarray:
    want = V2_NP[v2type]
    try:
        arr = np.asarray(data)
    except ValueError as e:  # ragged nested lists
        raise RequestError(f"input {name!r}: data is not a regular array ({e})") from None
    kinds = {"BOOL": "b"}.get(v2type, "iu" if np.dtype(want).kind in "iu" else "iuf")  # bf16: kind V
    if arr.size and arr.dtype.kind not in kinds:
        raise RequestError(f"input {name!r}: data holds {arr.dtype.name} values, which datatype "
                           f"{v2type} cannot take")
    if arr.size != int(np.prod(shape, dtype=np.int64)):
        raise RequestError(f"input {name!r}: shape {shape} needs {int(np.prod(shape))} elements, "
                           f"data has {arr.size}")
    with np.errstate(all="ignore"):
        out = arr.astype(want).reshape(shape)
    if arr.size and arr.dtype.kind in "iu" and np.dtype(want).kind in "iu" and \
            not np.array_equal(out.reshape(-1), arr.reshape(-1)):
        raise RequestError(f"input {name!r}: values out of range for {v2type}")
    return out


def parse_infer(body: bytes, header_length: int | None = None) -> InferRequest:
    """Decode an infer request body (JSON, or JSON + binary tensors when ``header_length``).

    >>> parse_infer(b'{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}').inputs["x"]
    array([[1., 2.]], dtype=float32)
    """
    if header_length is not None:
        if not 0 <= header_length <= len(body):
            raise RequestError(f"Inference-Header-Content-Length {header_length} exceeds the body "
                               f"({len(body)} bytes)")
        head, binary = _json(body[:header_length], "request header"), memoryview(body)[header_length:]
    else:
        head, binary = _json(body, "request body"), memoryview(b"")
    if not isinstance(head, dict) or not isinstance(head.get("inputs"), list):
        raise RequestError('request must be a JSON object with an "inputs" list')
    req = InferRequest({}, id=head.get("id"))
    params = head.get("parameters") or {}
    all_binary = isinstance(params, dict) and bool(params.get("binary_data_output"))
    pos = 0
    for k, t in enumerate(head["inputs"]):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise RequestError(f"inputs[{k}] must be an object with a string \"name\"")
        name, v2type, shape = t["name"], t.get("datatype"), t.get("shape")
        if name in req.inputs:
            raise RequestError(f"input {name!r} given twice")
        if v2type not in V2_NP:
            raise RequestError(f"input {name!r}: unsupported datatype {v2type!r} "
                               f"(use one of {', '.join(V2_NP)})")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                                  and d >= 0 for d in shape):
            raise RequestError(f"input {name!r}: shape must be a list of non-negative integers, "
                               f"got {shape!r}")
        tparams = t.get("parameters") or {}
        size = tparams.get("binary_data_size") if isinstance(tparams, dict) else None
        if size is not None:
            itemsize = np.dtype(V2_NP[v2type]).itemsize
            if not isinstance(size, int) or size != itemsize * int(np.prod(shape, dtype=np.int64)):
                raise RequestError(f"input {name!r}: binary_data_size {size!r} does not match "
                                   f"shape {shape} of {v2type}")
            if pos + size > len(binary):
                raise RequestError(f"input {name!r}: binary data ends early ({len(binary) - pos} "
                                   f"of {size} bytes)")
            arr = np.frombuffer(binary[pos:pos + size], dtype=np.dtype(V2_NP[v2type]).newbyteorder("<"))
            req.inputs[name] = arr.astype(V2_NP[v2type], copy=False).reshape(shape)
            pos += size
        elif "data" in t:
            req.inputs[name] = _to_array(name, v2type, t["data"], shape)
        else:
            raise RequestError(f"input {name!r} has no \"data\" and no binary_data_size")
    if pos != len(binary):
        raise RequestError(f"{len(binary) - pos} bytes of binary data belong to no input")
    outs = head.get("outputs")
    if outs is not None:
        if not isinstance(outs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                 for o in outs):
            raise RequestError('"outputs" must be a list of objects with a "name"')
        req.outputs = [o["name"] for o in outs]
        for o in outs:
            p = o.get("parameters") or {}
            if all_binary or (isinstance(p, dict) and p.get("binary_data")):
                req.binary_outputs.add(o["name"])
    elif all_binary:
        req.binary_outputs = {"*"}
    return req


def encode_infer(model_name: str, req: InferRequest, outputs: list[tuple[str, np.ndarray]]):
    """The response body and its extra headers for ``outputs`` (name, array) pairs.

    >>> body, headers = encode_infer("m", InferRequest({}), [("y", np.ones(2, np.float32))])
    """
    entries, blobs = [], []
    for name, arr in outputs:
        v2type = TO_V2[_ember_name(arr.dtype)]
        e = {"name": name, "datatype": v2type, "shape": list(arr.shape)}
        if name in req.binary_outputs or "*" in req.binary_outputs:
            blob = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            e["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            flat = arr.reshape(-1)
            e["data"] = (flat.astype(np.float32) if v2type == "BF16" else flat).tolist()
        entries.append(e)
    head = {"model_name": model_name, "model_version": "1", "outputs": entries}
    if req.id is not None:
        head["id"] = req.id
    raw = json.dumps(head, separators=(",", ":")).encode()
    if not blobs:
        return raw, {"content-type": "application/json"}
    return raw + b"".join(blobs), {"content-type": "application/octet-stream",
                                   HEADER_LENGTH: str(len(raw))}


def _ember_name(dt: np.dtype) -> str:
    from ..ir.dtypes import from_numpy
    return from_numpy(dt).name


def model_metadata(name: str, inputs, outputs) -> dict:
    """The v2 model metadata object; symbolic dims are -1."""
    def tensor(s):
        return {"name": s.name, "datatype": TO_V2[s.dtype],
                "shape": [d if isinstance(d, int) else -1 for d in s.shape]}
    return {"name": name, "versions": ["1"], "platform": "ember_cpu",
            "inputs": [tensor(s) for s in inputs], "outputs": [tensor(s) for s in outputs]}
