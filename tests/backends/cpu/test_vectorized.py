"""gcc vectorizes the pointwise and reduction kernels Ember prints (issue: softmax, GELU and
layer norm must run at memory speed): every kernel's loop shows up in gcc's
``-fopt-info-vec-optimized`` report when the generated C is built with Ember's own flags."""
import re
import subprocess

import numpy as np
import pytest

import ember
from ember.backends.cpu import toolchain
from ember.ir import Graph, TensorType, dtypes, sym

F32 = dtypes.f32
rng = np.random.default_rng(0)


def _graph(build):
    g = Graph()
    x = g.add_input("x", TensorType(F32, (sym("n"), 768)))
    w = g.add_const(rng.standard_normal(768).astype(np.float32), "w")
    b = g.add_const(rng.standard_normal(768).astype(np.float32), "b")
    g.outputs = [build(g, x, w, b)]
    return g


MODELS = {
    "gelu + residual": lambda g, x, w, b: g.op("add", [g.op("gelu", [x]), x]),
    "softmax": lambda g, x, w, b: g.op("softmax", [x], {"axis": -1}),
    "layer_norm": lambda g, x, w, b: g.op("layer_norm", [x, w, b], {"axis": -1, "eps": 1e-5}),
    "rms_norm": lambda g, x, w, b: g.op("rms_norm", [x, w], {"axis": -1, "eps": 1e-6}),
    "max": lambda g, x, w, b: g.op("max", [g.op("tanh", [x])], {"axes": [-1], "keepdims": True}),
    "mean": lambda g, x, w, b: g.op("mean", [g.op("sigmoid", [x])], {"axes": [-1], "keepdims": True}),
}


def _kernel_ranges(source: str) -> dict[str, tuple[int, int]]:
    starts = [(m.group(1), source[:m.start()].count("\n") + 1)
              for m in re.finditer(r"^EMBER_KERNEL void (kernel\d+)\(.*\{$", source, re.M)]
    ends = [s for _, s in starts[1:]] + [source.count("\n") + 1]
    return {name: (s, e) for (name, s), e in zip(starts, ends)}


@pytest.mark.parametrize("opt_level", [0, 2])
@pytest.mark.parametrize("name", list(MODELS))
def test_every_kernel_loop_is_vectorized(name, opt_level, tmp_path):
    cm = ember.compile(_graph(MODELS[name]), opt_level=opt_level)
    src = tmp_path / "model.c"
    src.write_text(cm.source)
    r = subprocess.run([toolchain.find_compiler(), *toolchain.FLAGS, "-fopt-info-vec-optimized", "-c",
                        str(src), "-o", str(tmp_path / "model.o")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    vectorized = {int(m.group(1)) for m in re.finditer(r"model\.c:(\d+):\d+: optimized: loop vectorized", r.stderr)}
    kernels = _kernel_ranges(cm.source)
    assert kernels
    scalar = [k for k, (s, e) in kernels.items() if not any(s <= line < e for line in vectorized)]
    assert not scalar, f"{name} -O{opt_level}: no vectorized loop in {scalar}"
    # and every reduction's innermost loop (gcc names an `omp simd` loop by its pragma line)
    lines = cm.source.splitlines()
    inner = [i + 1 for i, ln in enumerate(lines) if re.match(r"\s*for \(int64_t r\d+ = 0;", ln)
             and not re.match(r"\s*for \(int64_t r\d+ = 0;", lines[i + 1])]
    missed = [i for i in inner if i not in vectorized and i - 1 not in vectorized]
    assert not missed, f"{name} -O{opt_level}: reduction loops at lines {missed} stay scalar"


def _window_graph(kind, w):
    g = Graph()
    x = g.add_input("x", TensorType(F32, (sym("n"), 4, 9, w)))
    if kind == "depthwise":
        y = g.op("conv2d", [x, g.add_const(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w")],
                 {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 4})
    else:
        y = g.op(kind, [x], {"kernel": (3, 3), "stride": (1, 1), "padding": (1, 1), "ceil_mode": False})
    g.outputs = [y]
    return g


@pytest.mark.parametrize("kind", ["avg_pool2d", "max_pool2d", "depthwise"])
def test_window_kernels_are_simd_across_outputs(kind, tmp_path):
    # a 3x3 window is nine straight-line taps inside a SIMD loop over the output row (a SIMD
    # loop over 3 taps would do nothing); odd widths, padding, batch 1 and 2 against numpy
    from ember.testing import check_against_reference
    for w in (1, 3, 127):
        g = _window_graph(kind, w)
        cm = ember.compile(g, opt_level=2)
        check_against_reference(g, [[rng.standard_normal((n, 4, 9, w)).astype(np.float32)] for n in (1, 2)],
                                rtol=1e-5, atol=1e-5, compiled=cm)
    last_tap = "r0 = 0, r1 = 2, r2 = 2;" if kind == "depthwise" else "r0 = 2, r1 = 2;"  # (channel,) row, column
    assert "#pragma omp simd\n" in cm.source and f"const int64_t {last_tap}" in cm.source
    src = tmp_path / "model.c"
    src.write_text(cm.source)
    r = subprocess.run([toolchain.find_compiler(), *toolchain.FLAGS, "-fopt-info-vec-optimized", "-c",
                        str(src), "-o", str(tmp_path / "model.o")], capture_output=True, text=True)
    assert r.returncode == 0 and "loop vectorized" in r.stderr, r.stderr


def test_max_pool_of_any_image_size_reads_each_tap_once():
    # a window tap at the image's edge is a masked load; printed twice inside the max's select,
    # gcc compiled it to data-dependent branches (4x slower on random data with symbolic sizes)
    from ember.testing import check_against_reference
    g = Graph()
    x = g.add_input("x", TensorType(F32, (sym("n"), 4, sym("h"), sym("w"))))
    g.outputs = [g.op("max_pool2d", [x], {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1),
                                          "ceil_mode": False})]
    cm = ember.compile(g, opt_level=2)
    check_against_reference(g, [[rng.standard_normal((n, 4, h, w)).astype(np.float32)]
                                for n, h, w in ((1, 1, 1), (2, 9, 7), (1, 30, 17))],
                            rtol=0, atol=0, compiled=cm)
    taps = [ln for ln in cm.source.splitlines() if "acc = _v > acc ? _v : acc;" in ln]
    assert len(taps) == 9 and all(ln.count("p1[") == 1 for ln in taps), taps
