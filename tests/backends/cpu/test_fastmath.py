"""The prelude's float32 exp/tanh/erf/sigmoid against float64 numpy, in ulps.

Built with the same flags as generated code (-O3 -ffast-math ...), so a compiler that
reassociates the range reduction or flushes the scaling would show up here. Results below
FLT_MIN count as exact when within FLT_MIN: the process may run with denormals flushed.
"""
import ctypes
import math

import numpy as np
import pytest

from ember.backends.cpu.fastmath import C_SOURCE
from ember.backends.cpu.toolchain import build

FUNCS = ("ember_expf", "ember_tanhf", "ember_erff", "ember_sigmoidf")
SOFTMAX_EXP = "ember_expf_softmax"   # softmax's exp: x < 88 only, and 0 for x < -87
_erf = np.frompyfunc(math.erf, 1, 1)
REF = {"ember_expf": np.exp, "ember_tanhf": np.tanh,
       "ember_erff": lambda x: _erf(x).astype(np.float64),
       "ember_sigmoidf": lambda x: 1.0 / (1.0 + np.exp(-x)), SOFTMAX_EXP: lambda x: np.where(x < -87, 0.0, np.exp(x))}
MAX_ULP = {SOFTMAX_EXP: 2.0, "ember_expf": 2.0, "ember_tanhf": 2.0, "ember_erff": 2.0, "ember_sigmoidf": 2.5}
RANGE = {"ember_expf": (-110, 95), "ember_tanhf": (-20, 20), "ember_erff": (-6, 6),
         "ember_sigmoidf": (-110, 110), SOFTMAX_EXP: (-110, 88)}


@pytest.fixture(scope="module")
def lib():
    loops = "".join(f"void run_{f}(const float *restrict x, float *restrict y, int64_t n) "
                    f"{{ for (int64_t i = 0; i < n; i++) y[i] = {f}(x[i]); }}\n" for f in FUNCS + (SOFTMAX_EXP,))
    src = "#include <stdint.h>\n#include <math.h>\n#include <string.h>\n" + C_SOURCE + loops
    return ctypes.CDLL(str(build(src)))


def run(lib, fn, x):
    x = np.ascontiguousarray(x, np.float32)
    y = np.empty_like(x)
    getattr(lib, f"run_{fn}")(ctypes.c_void_p(x.ctypes.data), ctypes.c_void_p(y.ctypes.data),
                              ctypes.c_int64(x.size))
    return y


def ulp_error(got, want):
    """|got - want| in units of the float32 spacing at want (computed in float64)."""
    got = got.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return _ulp_error(got, want)


def _ulp_error(got, want):
    _, e = np.frexp(np.abs(want))
    err = np.abs(got - want) / np.ldexp(1.0, np.maximum(e, -125) - 24)
    tiny = np.abs(want) < np.finfo(np.float32).tiny
    err[tiny] = np.where(np.abs(got - want)[tiny] <= np.finfo(np.float32).tiny, 0.0, np.inf)
    big = np.abs(want) > np.finfo(np.float32).max
    err[big] = np.where(np.isinf(got[big]) & (np.sign(got[big]) == np.sign(want[big])), 0.0, np.inf)
    return err


@pytest.mark.parametrize("fn", FUNCS + (SOFTMAX_EXP,))
def test_ulp_error_over_wide_range(lib, fn):
    lo, hi = RANGE[fn]
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(lo, hi, 200001), rng.standard_normal(50000) * 3,
                        np.geomspace(1e-30, 10, 5000), -np.geomspace(1e-30, 10, 5000)]).astype(np.float32)
    with np.errstate(over="ignore"):
        want = REF[fn](x.astype(np.float64))
    err = ulp_error(run(lib, fn, x), want)
    k = int(np.argmax(err))
    assert err[k] <= MAX_ULP[fn], f"{fn}({x[k]!r}) is {err[k]:.2f} ulp off"


@pytest.mark.parametrize("fn", FUNCS)
def test_extremes(lib, fn):
    x = np.array([np.inf, -np.inf, np.nan, 0.0, 88.72, 88.73, -87.33, -103.9, -104.5, 1e4, -1e4,
                  3.9375, 1.0, 0.625, 1e-20, -1e-20, np.finfo(np.float32).max], np.float32)
    got = run(lib, fn, x)
    with np.errstate(over="ignore", invalid="ignore"):
        want = REF[fn](x.astype(np.float64))
    assert np.isnan(got[2]) and not np.isnan(got[[0, 1] + list(range(3, len(x)))]).any()
    ok = np.isnan(want) | (ulp_error(got, want) <= MAX_ULP[fn])
    assert ok.all(), f"{fn} at {x[~ok]}: got {got[~ok]}, want {want[~ok]}"


def test_softmax_exp_flushes_to_zero_and_keeps_nan(lib):
    x = np.array([0.0, -1e-20, -87.0, -87.01, -87.4, -103.0, -1e4, -np.finfo(np.float32).max, -np.inf,
                  np.nan, 87.9], np.float32)
    got = run(lib, SOFTMAX_EXP, x)
    np.testing.assert_array_equal(got[3:9], 0.0)
    assert np.isnan(got[9]) and got[0] == 1.0 and got[1] == 1.0
    assert (ulp_error(got[[2, 10]], np.exp(x[[2, 10]].astype(np.float64))) <= 2).all()


def test_generated_code_uses_them():
    from ember.backends.cpu.codegen import generate
    from ember.ir import Graph, TensorType, dtypes
    from ember.lower.lowering import lower
    g = Graph()
    x = g.add_input("x", TensorType(dtypes.f32, (8,)))
    g.outputs = [g.op("gelu", [x], {"approximate": "none"}), g.op("exp", [x])]
    src = generate(lower(g))
    assert "ember_erff(" in src and "ember_expf(" in src and " erff(" not in src
