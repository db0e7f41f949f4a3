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
    saved = native._fast, native._runner
    if not use_shim:
        native._fast = native._runner = None
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
        native._fast, native._runner = saved


def test_runner_serves_repeated_shapes_in_c(model):
    compiled, _ = model
    native = compiled.native
    if native._runner is None:
        pytest.skip("no shim here")
    w = compiled.graph.constants[0].data.T
    x1, x2 = (rng.standard_normal((4, 8)).astype(np.float32) for _ in range(2))
    y1 = compiled(x1)                      # general path, primes the runner for (4, 8)
    got = native._runner((x2,))            # now served in C
    assert got is not None
    np.testing.assert_allclose(got[0], np.maximum(x2 @ w, 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y1, np.maximum(x1 @ w, 0), rtol=1e-5, atol=1e-5)  # fresh outputs
    assert got[0] is not compiled(x2)
    # anything else is declined, and the general path answers (or raises) as before
    assert native._runner((np.zeros((5, 8), np.float32),)) is None
    assert native._runner((x2.astype(np.float64),)) is None
    assert native._runner((np.zeros((8, 4), np.float32).T,)) is None   # not C-contiguous
    assert native._runner([x2, x2]) is None and native._runner(x2) is None
    with pytest.raises(DTypeError):
        compiled(x2.astype(np.float64))

def test_threads_share_one_model(model):
    compiled, _ = model
    xs = [rng.standard_normal((n, 8)).astype(np.float32) for n in (1, 2, 7, 64, 64, 64)]
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
