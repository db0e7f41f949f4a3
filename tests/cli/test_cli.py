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


def test_inspect_c_is_the_fused_program(tmp_path):
    # a linear layer with bias and ReLU is one GEMM kernel with an epilogue, as ember.compile builds it
    w = ", ".join(str(0.1 * (k % 7) - 0.3) for k in range(32))
    f = tmp_path / "g.ir"
    f.write_text("graph g(%x: f32[n, 8]) -> (f32[n, 4]) {\n"
                 f"  %w = const [{w}] : f32[8, 4]\n"
                 "  %b = const [0.5, -0.5, 1.0, 0.0] : f32[4]\n"
                 "  %1 = matmul(%x, %w) : f32[n, 4]\n"
                 "  %2 = add(%1, %b) : f32[n, 4]\n"
                 "  %3 = relu(%2) : f32[n, 4]\n"
                 "  return %3\n}\n")
    r = run("inspect", str(f), "--c")
    assert r.returncode == 0, r.stderr
    assert "# kernels: 1; fusions: 1" in r.stdout   # matmul+add became linear; relu its epilogue
    c = r.stdout[r.stdout.index("# generated C"):]
    assert "void kernel0(" in c and "void kernel1(" not in c
    r0 = run("inspect", str(f), "--c", "-O", "0")
    assert r0.returncode == 0 and "# kernels: 2; fusions: 0" in r0.stdout   # GEMM, then add+relu as one loop


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
