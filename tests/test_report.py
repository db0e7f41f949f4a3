"""The HTML compilation report, rendered by a real headless Chromium when one is installed."""
import shutil
import struct
import subprocess

import numpy as np
import pytest

from ember.cli import main as ember_main
from ember.ir import Graph, TensorType, dtypes, sym
from ember.report import build_report, render


def model_graph():
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.add_input("x", TensorType(dtypes.f32, (sym("n"), 8)))
    h = g.op("linear", [x, g.add_const(rng.standard_normal((16, 8)).astype(np.float32), "w1"),
                        g.add_const(np.zeros(16, np.float32), "b1")])
    h = g.op("gelu", [h])
    y = g.op("linear", [h, g.add_const(rng.standard_normal((8, 16)).astype(np.float32), "w2")])
    g.outputs = [g.op("softmax", [g.op("add", [y, x])], {"axis": 1})]
    return g


def test_report_content():
    page = render(build_report(model_graph(), title="tiny mlp", verify=True))
    assert page.startswith("<!doctype html>") and "tiny mlp" in page
    assert page.count("<svg") == 2                          # graph at the start and at the end
    assert 'id="passes"' in page and "fold_constants" in page and "verify" in page
    assert "epilogue of" in page                             # the fusion decisions
    assert "workspace <b>" in page                           # the memory plan
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(tmp_path):
    path = tmp_path / "report.html"
    from ember.report import write_report
    write_report(path, model_graph(), title="render check")
    base = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(base + ["--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="kernels"' in dom.stdout and "<svg" in dom.stdout and "render check" in dom.stdout
    png = tmp_path / "shot.png"
    shot = subprocess.run(base + ["--window-size=1200,900", f"--screenshot={png}", path.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", header[16:24]) == (1200, 900)
    assert png.stat().st_size > 5000  # a drawn page, not a blank one


def test_inspect_html_from_the_cli(tmp_path, capsys):
    ir = tmp_path / "g.ir"
    ir.write_text("graph g(%x: f32[n, 4]) -> (f32[n, 4]) {\n  %1 = relu(%x) : f32[n, 4]\n"
                  "  %2 = mul(%1, %1) : f32[n, 4]\n  return %2\n}\n")
    out = tmp_path / "r.html"
    assert ember_main(["inspect", str(ir), "--html", str(out)]) == 0
    assert out.exists() and "Ember compilation report" in out.read_text()
