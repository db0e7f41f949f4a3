"""The safetensors format with numpy alone: write a dict of arrays, read it back memory-mapped.

The format: an 8-byte little-endian header length N, N bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``),
then the tensors' raw little-endian bytes, back to back, with no holes. Nothing in it can run
code (no pickle), and files written here load with the official ``safetensors`` package.
"""
from __future__ import annotations

import json
import mmap
import os
from pathlib import Path

import numpy as np

from ..errors import ArtifactError

_TO_NP = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
          "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
_FROM_NP = {np.dtype(v).str.replace("|", "").lstrip("<"): k for k, v in _TO_NP.items()}
MAX_HEADER = 100 * 1024 * 1024  # the official reader's limit too


def _np_dtype(code: str) -> np.dtype:
    if code == "BF16":
        from ..ir.dtypes import bf16
        return bf16.np
    return np.dtype(_TO_NP[code])


def _code(dt: np.dtype) -> str:
    if np.dtype(dt).name == "bfloat16":   # ml_dtypes' type: numpy calls it '<V2'
        return "BF16"
    code = _FROM_NP.get(np.dtype(dt).newbyteorder("<").str.replace("|", "").lstrip("<"))
    if code is None:
        raise ArtifactError(f"safetensors cannot hold dtype {dt}")
    return code


def encode_header(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None):
    """JSON header bytes (space-padded to 8) and the arrays in file order.

    >>> header, order = encode_header({"w": np.zeros(3, np.float32)})
    >>> len(header) % 8
    0
    """
    # Widest dtypes first (as the official writer does), so every tensor starts aligned to
    # its item size and a memory map can hand out properly aligned arrays.
    names = sorted(tensors, key=lambda n: (-tensors[n].dtype.itemsize, n))
    head: dict = {"__metadata__": dict(metadata)} if metadata else {}
    order, pos = [], 0
    for n in names:
        a = np.ascontiguousarray(tensors[n])
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        head[n] = {"dtype": _code(a.dtype), "shape": list(a.shape),
                   "data_offsets": [pos, pos + a.nbytes]}
        pos += a.nbytes
        order.append(a)
    raw = json.dumps(head, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return raw, order


def save(tensors: dict[str, np.ndarray], path, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to a safetensors file.

    >>> save({"w": np.ones((2, 2), np.float32)}, "w.safetensors")
    >>> load("w.safetensors")["w"].shape
    (2, 2)
    """
    header, order = encode_header(tensors, metadata)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        for a in order:
            f.write(memoryview(a.reshape(-1).view(np.uint8)))  # the bytes of any dtype, bf16 too


def read_header(buf, where: str = "safetensors file") -> tuple[dict, int]:
    """Parse and validate the header of ``buf`` (bytes or mmap); returns (header, data_start)."""
    if len(buf) < 8:
        raise ArtifactError(f"{where}: too short to be a safetensors file")
    n = int.from_bytes(buf[:8], "little")
    if n > MAX_HEADER or 8 + n > len(buf):
        raise ArtifactError(f"{where}: header length {n} does not fit the file ({len(buf)} bytes)")
    try:
        head = json.loads(bytes(buf[8:8 + n]))
    except (UnicodeDecodeError, ValueError) as e:
        raise ArtifactError(f"{where}: header is not valid JSON ({e})") from None
    if not isinstance(head, dict):
        raise ArtifactError(f"{where}: header is not a JSON object")
    start, size = 8 + n, len(buf) - 8 - n
    spans = []
    for name, info in head.items():
        if name == "__metadata__":
            continue
        try:
            dt = _np_dtype(info["dtype"])
            shape = [int(d) for d in info["shape"]]
            b, e = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(f"{where}: bad entry for tensor {name!r}: {info!r}") from None
        if not 0 <= b <= e <= size or e - b != dt.itemsize * int(np.prod(shape, dtype=np.int64)):
            raise ArtifactError(f"{where}: tensor {name!r} offsets {b}..{e} do not match "
                                f"its shape {shape} and dtype {info['dtype']}")
        spans.append((b, e))
    spans.sort()
    pos = 0
    for b, e in spans:
        if b != pos:
            raise ArtifactError(f"{where}: tensor data overlaps or leaves a hole at byte {pos}")
        pos = e
    if pos != size:
        raise ArtifactError(f"{where}: {size - pos} trailing bytes after the last tensor")
    return head, start


def load(path, mmap_mode: bool = True) -> dict[str, np.ndarray]:
    """Read every tensor of a safetensors file; read-only memory-mapped views by default.

    >>> w = load("weights.safetensors")["w"]
    >>> w.flags.writeable
    False
    """
    path = Path(path)
    if mmap_mode and os.path.getsize(path) > 0:
        with open(path, "rb") as f:
            # The map outlives the file object; numpy views keep the map alive.
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    else:
        buf = path.read_bytes()
    head, start = read_header(buf, str(path))
    out = {}
    for name, info in head.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        dt = _np_dtype(info["dtype"])
        arr = np.frombuffer(buf, dtype=dt, count=(e - b) // dt.itemsize, offset=start + b)
        out[name] = arr.reshape(info["shape"])
    return out


def metadata(path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (empty when absent)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > MAX_HEADER:
            raise ArtifactError(f"{path}: header length {n} is implausible")
        head = json.loads(f.read(n))
    return dict(head.get("__metadata__") or {})
