"""Progress for slow steps (export, C compilation): shown on a terminal, silent otherwise."""
from __future__ import annotations

import contextlib
import os
import sys
import time


def _enabled() -> bool:
    return sys.stderr.isatty() and not os.environ.get("EMBER_QUIET")


@contextlib.contextmanager
def step(what: str):
    """``with step("Compiling C"):`` prints what runs and how long it took, on a terminal."""
    if not _enabled():
        yield
        return
    t0 = time.perf_counter()
    sys.stderr.write(f"  … {what}\r")
    sys.stderr.flush()
    try:
        yield
    except BaseException:
        sys.stderr.write(f"  ✗ {what}\n")
        raise
    sys.stderr.write(f"  ✓ {what} ({time.perf_counter() - t0:.1f}s)\n")
    sys.stderr.flush()
