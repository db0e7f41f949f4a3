"""The ``ember`` command, run as a user runs it: a real subprocess."""
import subprocess
import sys

import ember

EMBER = [sys.executable, "-m", "ember.cli"]


def run(*args, timeout=600):
    return subprocess.run(EMBER + list(args), capture_output=True, text=True, timeout=timeout)


def test_version_and_help():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"ember {ember.__version__}"
    r = run("--help")
    assert r.returncode == 0 and "demo" in r.stdout and "inspect" in r.stdout


def test_inspect_text_ir(tmp_path):
    f = tmp_path / "g.ir"
    f.write_text("graph g(%x: f32[n, 4]) -> (f32[n, 4]) {\n"
                 "  %two = const [2.0] : f32[1]\n"
                 "  %1 = mul(%x, %two) : f32[n, 4]\n"
                 "  %2 = relu(%1) : f32[n, 4]\n"
                 "  return %2\n}\n")
    r = run("inspect", str(f), "--after", "all", "--c")
    assert r.returncode == 0, r.stderr
    assert "%2 = relu(%1) : f32[n, 4]" in r.stdout
    assert "# after dce" in r.stdout and "int ember_main(" in r.stdout


def test_inspect_bad_target_is_a_clear_error(tmp_path):
    r = run("inspect", str(tmp_path / "missing.onnx"))
    assert r.returncode == 2 and "ember: error: cannot load" in r.stderr
    assert "Traceback" not in r.stderr


def test_demo_primer_model():
    r = run("demo", "--models", "linear", "--rounds", "50")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["model", "input", "max"]
    row = next(ln for ln in lines if ln.startswith("linear"))
    assert " yes " in row and "µs" in row
