"""``ember run`` and ``ember bench``, as a user runs them (real subprocesses)."""
import subprocess
import sys

import numpy as np

import ember
from ember.ir import Graph, TensorType, dtypes, sym


def run(*args):
    return subprocess.run([sys.executable, "-m", "ember.cli", *args], capture_output=True,
                          text=True, timeout=600)


def saved_model(tmp_path):
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.add_input("x", TensorType(dtypes.f32, (sym("batch"), 6)))
    w = rng.standard_normal((3, 6)).astype(np.float32)
    g.outputs = [g.op("relu", [g.op("linear", [x, g.add_const(w, "w")])])]
    g.output_names = ["y"]
    ember.compile(g).save(tmp_path / "m.ember")
    return tmp_path / "m.ember", w


def test_run_from_npy_files(tmp_path):
    path, w = saved_model(tmp_path)
    x = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = run("run", str(path), "--input", f"x={tmp_path / 'x.npy'}", "-o", str(tmp_path / "out.npz"))
    assert r.returncode == 0, r.stderr
    assert "y: float32[5, 3]" in r.stdout
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["y"], np.maximum(x @ w.T, 0), rtol=1e-5, atol=1e-6)


def test_run_random_inputs_with_dims_and_clear_errors(tmp_path):
    path, _ = saved_model(tmp_path)
    r = run("run", str(path), "--dim", "batch=7")
    assert r.returncode == 0 and "y: float32[7, 3]" in r.stdout, r.stderr
    r = run("run", str(path), "--input", "z=nothing.npy")
    assert r.returncode == 2 and "the model's inputs are x" in r.stderr
    r = run("run", str(path), "--input", f"x={tmp_path / 'missing.npy'}")
    assert r.returncode == 2 and "cannot read it as .npy" in r.stderr


def test_bench_torch_model_against_eager():
    r = run("bench", "demo:linear", "--rounds", "20", "--max-seconds", "5")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("demo:linear (input[1, 10])")
    assert any(ln.startswith("Ember ") for ln in lines)
    eager = [ln for ln in lines if ln.startswith("PyTorch eager")]
    assert eager and ("faster" in eager[0] or "slower" in eager[0])


def test_bench_artifact(tmp_path):
    path, _ = saved_model(tmp_path)
    r = run("bench", str(path), "--dim", "batch=4", "--rounds", "10", "--threads", "1", "--profile")
    assert r.returncode == 0, r.stderr
    assert "x[4, 6]" in r.stdout and "1 thread(s)" in r.stdout
    table = r.stdout[r.stdout.index("\nkernel ") + 1:].splitlines()[1:]   # --profile: one row per kernel
    assert table[0].startswith("k") and ": linear %" in table[0] and "relu %" in table[0], table
    assert "by form: gemm 100%" in table[-1]
