"""Observers: what calibration learns about one activation tensor, and the range it picks.

Every observer sees the same statistics (exact min / max and a bounded random sample of the
values); they differ in how they choose the clipping range [lo, hi] that the u8 / i8 grid
will cover:

* ``minmax``: the observed extremes (no clipping; safe, coarse when there are outliers);
* ``percentile``: the ``percentile``-th and ``100 - percentile``-th percentiles;
* ``mse``: the range (shrunk from min/max in steps) whose quantize-dequantize round trip has
  the smallest mean squared error on the sample;
* ``entropy``: TensorRT's KL-divergence calibration on the histogram of |x|.
"""
from __future__ import annotations

import numpy as np

from ..errors import QuantizationError

OBSERVERS = ("minmax", "percentile", "mse", "entropy")
_SAMPLE_PER_BATCH = 1 << 15
_SAMPLE_MAX = 1 << 19


class Observer:
    def __init__(self, kind: str = "minmax", percentile: float = 99.99, seed: int = 0):
        if kind not in OBSERVERS:
            raise QuantizationError(f"unknown observer {kind!r}; choose one of {', '.join(OBSERVERS)}")
        if not 50.0 < percentile <= 100.0:
            raise QuantizationError(f"percentile must be in (50, 100], got {percentile}")
        self.kind, self.percentile = kind, float(percentile)
        self.lo, self.hi = np.inf, -np.inf
        self.samples: list[np.ndarray] = []
        self._n = 0
        self._rng = np.random.default_rng(seed)

    def observe(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32).reshape(-1)
        if x.size == 0:
            return
        fin = x[np.isfinite(x)]
        if fin.size == 0:
            return
        self.lo, self.hi = min(self.lo, float(fin.min())), max(self.hi, float(fin.max()))
        if self.kind != "minmax" and self._n < _SAMPLE_MAX:
            take = fin if fin.size <= _SAMPLE_PER_BATCH else self._rng.choice(fin, _SAMPLE_PER_BATCH, replace=False)
            self.samples.append(take)
            self._n += take.size

    @property
    def seen(self) -> bool:
        return self.lo <= self.hi

    def range(self, symmetric: bool = False) -> tuple[float, float]:
        if not self.seen:
            return 0.0, 0.0
        if self.kind == "minmax":
            return self.lo, self.hi
        s = np.concatenate(self.samples)
        if self.kind == "percentile":
            p = self.percentile
            lo, hi = float(np.percentile(s, 100 - p)), float(np.percentile(s, p))
            return min(lo, 0.0) if self.lo < 0 else lo, hi
        if self.kind == "mse":
            return _mse_range(s, self.lo, self.hi, symmetric)
        return _entropy_range(s, self.lo, self.hi)


def qparams(lo: float, hi: float, dtype: str = "u8") -> tuple[np.float32, int]:
    """(scale, zero point) covering [lo, hi] (0 always included). u8: asymmetric; i8: symmetric."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if dtype == "i8":
        amax = max(-lo, hi)
        scale = np.float32(amax / 127.0) if amax > 0 else np.float32(1.0)
        return scale, 0
    scale = np.float32((hi - lo) / 255.0) if hi > lo else np.float32(1.0)
    zp = int(np.clip(np.rint(-lo / float(scale)), 0, 255))
    return scale, zp


def fake_quant(x, scale, zp, dtype="u8"):
    qmin, qmax = (0, 255) if dtype == "u8" else (-128, 127)
    q = np.clip(np.rint(x / scale) + zp, qmin, qmax)
    return (q - zp) * scale


def _mse_range(s, lo, hi, symmetric):
    best, best_err = (lo, hi), np.inf
    for f in np.linspace(1.0, 0.2, 33):
        cl, ch = lo * f, hi * f
        sc, zp = qparams(cl, ch, "i8" if symmetric else "u8")
        err = float(np.mean((fake_quant(s, sc, zp, "i8" if symmetric else "u8") - s) ** 2))
        if err < best_err:
            best, best_err = (cl, ch), err
    return best


def _entropy_range(s, lo, hi, bins=2048, levels=128):
    """TensorRT-style: the |x| threshold minimising KL(P || Q) between the clipped histogram
    and its ``levels``-level quantization."""
    a = np.abs(s)
    amax = float(a.max())
    if amax == 0:
        return lo, hi
    hist, edges = np.histogram(a, bins=bins, range=(0, amax))
    hist = hist.astype(np.float64)
    best_t, best_kl = amax, np.inf
    for i in range(levels, bins + 1, 16):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        # quantize the i bins into `levels` groups, expand back over the non-empty bins
        q = np.zeros(i)
        groups = np.array_split(np.arange(i), levels)
        for g in groups:
            nz = hist[g] != 0
            if nz.any():
                q[g[nz]] = hist[g].sum() / nz.sum()
        ps, qs = p.sum(), q.sum()
        if ps == 0 or qs == 0:
            continue
        p, q = p / ps, q / qs
        m = p > 0
        kl = float(np.sum(p[m] * np.log(p[m] / np.maximum(q[m], 1e-12))))
        if kl < best_kl:
            best_kl, best_t = kl, float(edges[i])
    return max(lo, -best_t), min(hi, best_t)
