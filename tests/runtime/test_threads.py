"""Thread control: ``threads=``, ``compiled.threads``, ``EMBER_NUM_THREADS`` and the C setter.

The thread counts are observed from outside: a fresh process (numpy and Ember only, no
PyTorch) loads a saved model and counts its own OS threads after running a GEMM large
enough to go parallel.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ember
from ember.errors import InputError
from ember.ir import Graph, TensorType, dtypes, interpret, sym

REPO = Path(__file__).resolve().parents[2]


def big_linear(seed=0):
    """A GEMM of 256 x 384 x 384: far above the size where kernels go multi-threaded."""
    rng = np.random.default_rng(seed)
    g = Graph()
    x = g.add_input("x", TensorType(dtypes.f32, (sym("batch"), 384)))
    w = g.add_const(rng.standard_normal((384, 384)).astype(np.float32), "w")
    g.outputs = [g.op("relu", [g.op("linear", [x, w])])]
    return g


@pytest.fixture(scope="module")
def graph():
    return big_linear()


def test_threads_option_gives_the_same_results(graph):
    x = np.random.default_rng(1).standard_normal((255, 384)).astype(np.float32)
    want = interpret(graph, [x])[0]
    one = ember.compile(graph, threads=1)
    assert one.threads == 1
    np.testing.assert_allclose(one(x), want, rtol=1e-4, atol=1e-4)
    one.threads = 2
    assert one.threads == 2
    np.testing.assert_allclose(one(x), want, rtol=1e-4, atol=1e-4)


def test_default_is_every_core_this_process_may_use(graph, monkeypatch):
    monkeypatch.delenv("EMBER_NUM_THREADS", raising=False)
    assert ember.compile(graph).threads == len(os.sched_getaffinity(0))
    monkeypatch.setenv("EMBER_NUM_THREADS", "1")
    assert ember.compile(graph).threads == 1


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2", True])
def test_bad_thread_counts_are_refused(graph, bad):
    cm = ember.compile(graph)
    with pytest.raises(InputError, match="threads must be a positive integer"):
        cm.threads = bad


def test_bad_environment_value_is_refused(graph, monkeypatch):
    monkeypatch.setenv("EMBER_NUM_THREADS", "many")
    with pytest.raises(InputError, match="EMBER_NUM_THREADS"):
        ember.compile(graph)


COUNT_THREADS = textwrap.dedent("""
    import os, sys
    import numpy as np
    import ember
    model = ember.load(sys.argv[1], threads=int(sys.argv[2]) if len(sys.argv) > 2 else None)
    x = np.ones((256, 384), np.float32)
    for _ in range(5):
        model(x)
    assert "torch" not in sys.modules
    print(model.threads, len(os.listdir("/proc/self/task")))
""")


def _threads_in_fresh_process(path, env_threads=None, arg=None):
    env = {k: v for k, v in os.environ.items() if k not in ("EMBER_NUM_THREADS", "OMP_NUM_THREADS")}
    env.update(OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    if env_threads is not None:
        env["EMBER_NUM_THREADS"] = str(env_threads)
    argv = [sys.executable, "-c", COUNT_THREADS, str(path)] + ([str(arg)] if arg else [])
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    setting, os_threads = map(int, out.stdout.split())
    return setting, os_threads


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to see a second thread")
def test_the_library_runs_on_the_threads_asked_for(graph, tmp_path):
    ember.compile(graph).save(tmp_path / "m.ember")
    # one thread: OpenMP never starts a worker, so the process keeps its one OS thread
    assert _threads_in_fresh_process(tmp_path / "m.ember", env_threads=1) == (1, 1)
    assert _threads_in_fresh_process(tmp_path / "m.ember", arg=1) == (1, 1)
    setting, os_threads = _threads_in_fresh_process(tmp_path / "m.ember", env_threads=2)
    assert setting == 2 and os_threads == 2
