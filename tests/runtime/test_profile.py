"""Per-kernel profiles: every kernel timed, labelled with the graph nodes fused into it."""
import numpy as np
import pytest

import ember
from ember.errors import EmberError
from ember.ir import Graph, TensorType, dtypes, interpret, sym

F32 = dtypes.f32


def model_graph(seed=0, act="gelu"):
    """linear, then gelu -> softmax (one row kernel), x * 2 + 1 (a pointwise chain); with relu
    after the linear instead, the relu is the GEMM's epilogue."""
    rng = np.random.default_rng(seed)
    g = Graph()
    x = g.add_input("x", TensorType(F32, (sym("batch"), 24)))
    w = g.add_const(rng.standard_normal((40, 24)).astype(np.float32), "w")
    b = g.add_const(rng.standard_normal(40).astype(np.float32), "b")
    lin = g.op("linear", [x, w, b])
    h = g.op(act, [lin])
    s = g.op("softmax", [h], {"axis": -1}) if act == "gelu" else h
    two = g.add_const(np.array([2.0], np.float32), "two")
    one = g.add_const(np.array([1.0], np.float32), "one")
    t = g.op("add", [g.op("mul", [x, two]), one])
    g.outputs = [s, t]
    g.output_names = ["s", "t"]
    g.sym_ranges = {"batch": (1, 64)}
    return g


@pytest.fixture(scope="module")
def compiled():
    return ember.compile(model_graph())


def test_every_kernel_is_timed_and_named_after_its_nodes(compiled):
    x = np.random.default_rng(1).standard_normal((7, 24)).astype(np.float32)
    p = compiled.profile(x, runs=5)
    assert len(p.kernels) == compiled.kernels
    labels = [k.label for k in p.kernels]
    gemm = next(k for k in p.kernels if " gemm " in k.label)
    assert gemm.label.split(":")[0].endswith("gemm 7x40x24") or "gemm batchx40x24" in gemm.label, gemm.label
    assert gemm.label.endswith(": linear %0"), gemm.label
    assert any(lb.endswith(" row: softmax %2 + gelu %1") for lb in labels), labels
    assert any(" pointwise: " in lb and "mul %" in lb and "add %" in lb for lb in labels), labels
    assert all(k.seconds > 0 for k in p.kernels)
    assert p.kernel_seconds <= p.call_seconds * 1.5 + 1e-4
    assert gemm.flops == 2 * 7 * 40 * 24 and gemm.gflops > 0
    assert all(k.flops == 0 and k.gflops is None for k in p.kernels if k is not gemm)
    table = p.table()
    assert table.splitlines()[0].split()[:2] == ["kernel", "median"]
    assert gemm.label in table and "by form: " in table
    assert set(p.by_form()) == {"gemm", "row", "pointwise"}


def test_an_epilogue_is_named_in_its_gemm():
    c = ember.compile(model_graph(act="relu"))
    p = c.profile(np.ones((3, 24), np.float32), runs=2)
    assert any(k.label.endswith("gemm batchx40x24: linear %0 + relu %1") for k in p.kernels), p.kernels


def test_profiling_leaves_results_and_later_calls_alone(compiled):
    g = model_graph()
    for n in (1, 3, 64):
        x = np.random.default_rng(n).standard_normal((n, 24)).astype(np.float32)
        p = compiled.profile(x, runs=3, warmup=1)
        gemm = next(k for k in p.kernels if " gemm " in k.label)
        assert gemm.flops == 2 * n * 40 * 24        # flops follow the symbolic batch
        want = interpret(g, [x])
        for got, ref in zip(compiled(x), want):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_a_saved_artifact_profiles_with_its_labels(compiled, tmp_path):
    compiled.save(tmp_path / "m.ember")
    loaded = ember.load(tmp_path / "m.ember")
    x = np.ones((2, 24), np.float32)
    a = [k.label for k in loaded.profile(x, runs=2).kernels]
    assert a == [k.label for k in compiled.profile(x, runs=2).kernels]


def test_bad_profile_requests_are_clear_errors(compiled):
    with pytest.raises(EmberError, match="runs must be at least 1"):
        compiled.profile(np.ones((2, 24), np.float32), runs=0)
    with pytest.raises(EmberError, match="input 'x'"):
        compiled.profile(np.ones((2, 25), np.float32), runs=1)
    with pytest.raises(EmberError, match="dtype"):
        compiled.profile(np.ones((2, 24), np.float64), runs=1)


def test_torch_model_profile_names_its_layers():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    x = torch.randn(5, 16)
    c = ember.compile(m, (x,))
    p = c.profile(x, runs=3)
    assert [k.label for k in p.kernels] == ["k2 gemm 5x32x16: linear %1 + relu %2", "k5 gemm 5x4x32: linear %6"]


def test_profiling_beside_a_serving_thread(compiled):
    # a server keeps calling the model while someone profiles it: the calls stay right and
    # nothing writes through a buffer that profiling has let go
    import threading
    x = np.random.default_rng(5).standard_normal((4, 24)).astype(np.float32)
    want = [a.copy() for a in compiled(x)]
    errors, stop = [], threading.Event()

    def serve():
        try:
            while not stop.is_set():
                for got, ref in zip(compiled(x), want):
                    np.testing.assert_array_equal(got, ref)
        except Exception as e:   # reported by the main thread
            errors.append(e)
    t = threading.Thread(target=serve)
    t.start()
    try:
        for _ in range(30):
            assert all(k.seconds >= 0 for k in compiled.profile(x, runs=3, warmup=0).kernels)
    finally:
        stop.set()
        t.join()
    assert not errors, errors
