"""The on-disk compile cache: ``$EMBER_CACHE_DIR`` or ``~/.cache/ember``.

Entries are keyed by a hash of everything that shapes the binary (source, flags, compiler,
CPU, Ember's version). Writes go to a temporary file in the same folder and are renamed
into place, so a reader never sees half a file, and two processes building the same key
at once both end with a whole one.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    d = Path(os.environ.get("EMBER_CACHE_DIR") or Path.home() / ".cache" / "ember")
    d.mkdir(parents=True, exist_ok=True)
    return d


def key(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


def entry(k: str, suffix: str) -> Path:
    d = cache_dir() / k[:2]
    d.mkdir(exist_ok=True)
    return d / f"{k}{suffix}"


def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
