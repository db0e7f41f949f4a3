"""Helpers for checking compiled code against the reference interpreter (used by the tests).

>>> check_against_reference(graph, [[x1], [x2]])   # compile once, run each input set
"""
from __future__ import annotations

import numpy as np

from .ir import dtypes, interpret


def tolerance(dtype) -> tuple[float, float]:
    return {"float16": (2e-3, 2e-3), "bfloat16": (1e-2, 1e-2),
            "float64": (1e-10, 1e-10)}.get(np.dtype(dtype).name, (1e-5, 1e-5))


def check_against_reference(graph, input_sets, rtol=None, atol=None, compiled=None, opt_level=0):
    """Compile ``graph`` once and compare it with the interpreter on every input set.

    ``opt_level=0`` (the default here) compiles the graph as written, so each op's own
    kernel is what gets checked; pass 2 to check the optimized pipeline too.
    """
    from .api import compile as ember_compile
    compiled = compiled or ember_compile(graph, opt_level=opt_level)
    for inputs in input_sets:
        want = interpret(graph, inputs)
        got = compiled.run_numpy(inputs)
        for k, (g, w) in enumerate(zip(got, want)):
            assert g.shape == w.shape, f"output {k}: shape {g.shape} != reference {w.shape}"
            assert g.dtype == w.dtype, f"output {k}: dtype {g.dtype} != reference {w.dtype}"
            if dtypes.np_is_float(w.dtype):
                r, a = tolerance(w.dtype)
                np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64),
                                           rtol=rtol or r, atol=atol or a,
                                           err_msg=f"output {k} differs from the reference")
            else:
                np.testing.assert_array_equal(g, w, err_msg=f"output {k} differs from the reference")
    return compiled
