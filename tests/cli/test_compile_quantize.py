"""``ember compile --quantize {dynamic,static} [--calibration data.npz]``, as a user runs it."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ember

torch = pytest.importorskip("torch")

MODEL = textwrap.dedent("""
    import torch

    def build():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 8)).eval()
        return model, (torch.randn(4, 64),)
""")


@pytest.fixture()
def workdir(tmp_path):
    (tmp_path / "qmodel.py").write_text(MODEL)
    return tmp_path


def ember_cli(cwd, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(cwd)] + sys.path))
    return subprocess.run([sys.executable, "-m", "ember.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def reference(x):
    sys.path.insert(0, "")
    ns: dict = {}
    exec(MODEL, ns)
    model, _ = ns["build"]()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def int8_consts(path) -> int:
    manifest = json.loads((path / "manifest.json").read_text())
    return sum(np.dtype(c["dtype"]).itemsize == 1 for c in manifest["consts"])


def check_close(path):
    x = np.random.default_rng(3).standard_normal((5, 64)).astype(np.float32)
    got, want = ember.load(path)(x), reference(x)
    cos = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
    assert cos > 0.99, cos


def test_dynamic(workdir):
    r = ember_cli(workdir, "compile", "qmodel:build", "-o", "q.ember", "--dynamic", "batch",
                  "--quantize", "dynamic", "--force-int8")
    assert r.returncode == 0, r.stderr
    assert "quantization: dynamic" in r.stderr and "2/2 layers int8" in r.stderr
    assert int8_consts(workdir / "q.ember") >= 2
    check_close(workdir / "q.ember")


def test_static_with_calibration_file(workdir):
    rng = np.random.default_rng(0)
    np.savez(workdir / "calib.npz", input=rng.standard_normal((40, 64)).astype(np.float32))
    r = ember_cli(workdir, "compile", "qmodel:build", "-o", "s.ember", "--dynamic", "batch",
                  "--quantize", "static", "--calibration", "calib.npz", "--calibration-batch", "4",
                  "--observer", "percentile", "--force-int8")
    assert r.returncode == 0, r.stderr
    assert "quantization: static (observer percentile)" in r.stderr
    assert int8_consts(workdir / "s.ember") >= 2
    check_close(workdir / "s.ember")


def test_static_needs_calibration(workdir):
    r = ember_cli(workdir, "compile", "qmodel:build", "-o", "s.ember", "--quantize", "static")
    assert r.returncode != 0 and "--quantize static needs --calibration" in r.stderr
    assert not (workdir / "s.ember").exists()


def test_calibration_with_wrong_names_is_a_clear_error(workdir):
    np.savez(workdir / "bad.npz", pixels=np.zeros((8, 64), np.float32))
    r = ember_cli(workdir, "compile", "qmodel:build", "-o", "s.ember", "--quantize", "static",
                  "--calibration", "bad.npz")
    assert r.returncode != 0
    assert "holds pixels" in r.stderr and "inputs are input" in r.stderr
    assert "Traceback" not in r.stderr
