"""The fastcall shim: same answers and errors as the ctypes path, arrays in any layout."""
import threading

import numpy as np
import pytest

import ember
from ember.errors import DTypeError, InputError
from ember.ir import Graph, TensorType, dtypes, sym
from ember.runtime import fastcall

rng = np.random.default_rng(0)


@pytest.fixture(scope="module")
def model():
    g = Graph()
    x = g.add_input("x", TensorType(dtypes.f32, (sym("n"), 8)))
    w = g.add_const(rng.standard_normal((3, 8)).astype(np.float32), "w")
    g.outputs = [g.op("relu", [g.op("linear", [x, w])])]
    return ember.compile(g), rng.standard_normal((3, 8)).astype(np.float32)


def test_shim_builds_here():
    mod = fastcall.load()
    if mod is None:
        pytest.skip("no Python.h or C compiler here: the runtime uses ctypes")
    assert callable(mod.call)


@pytest.mark.parametrize("use_shim", [True, False])
def test_same_results_and_errors(model, use_shim):
    compiled, w = model
    native = compiled.native
    saved = native._fast
    if not use_shim:
        native._fast = None
    try:
        for n in (1, 5):
            x = rng.standard_normal((n, 8)).astype(np.float32)
            want = np.maximum(x @ compiled.graph.constants[0].data.T, 0)
            np.testing.assert_allclose(native.run([x])[0], want, rtol=1e-5, atol=1e-5)
            xt = np.asfortranarray(x)        # not C-contiguous: copied, same answer
            np.testing.assert_allclose(native.run([xt])[0], want, rtol=1e-5, atol=1e-5)
            strided = np.repeat(x, 2, axis=1)[:, ::2]
            np.testing.assert_allclose(native.run([strided])[0], want, rtol=1e-5, atol=1e-5)
        with pytest.raises(DTypeError, match="input 'x'"):
            native.run([np.zeros((2, 8), np.float64)])
        with pytest.raises(InputError, match="dim 1 must be 8"):
            native.run([np.zeros((2, 7), np.float32)])
        with pytest.raises(InputError, match="takes 1 inputs"):
            native.run([])
    finally:
        native._fast = saved


def test_threads_share_one_model(model):
    compiled, _ = model
    xs = [rng.standard_normal((n, 8)).astype(np.float32) for n in (1, 2, 7, 64)]
    want = [compiled.run_numpy([x])[0] for x in xs]
    errors = []

    def work():
        for _ in range(200):
            for x, w in zip(xs, want):
                if not np.array_equal(compiled.run_numpy([x])[0], w):
                    errors.append("mismatch")
    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
