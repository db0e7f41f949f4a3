"""Winograd F(4x4, 3x3) conv2d (lower/winograd.py, backends/cpu/winograd.py) against the reference.

The transform matrices are checked in float64 against direct correlation; every compiled case
runs batch 1 and 3 through one build (a symbolic batch, so tiles span images), with odd
channel counts, images whose sides are not multiples of the 4x4 tile, paddings 0 to 2, and
bias / ReLU / residual epilogues fused into the output transform. A case too small for the
Winograd path must take the implicit-im2col GEMM instead.
"""
import numpy as np
import pytest

import ember
from ember.backends.cpu import toolchain
from ember.lower import winograd as wg
from ember.ir import Graph, TensorType, dtypes, interpret, sym

from test_conv import check, conv_graph


def _direct(d, g):
    """valid 2-D correlation of a [6, 6] patch with a [3, 3] filter -> [4, 4]"""
    return np.array([[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(4)] for i in range(4)])


def test_transforms_are_exact_in_float64():
    rng = np.random.default_rng(0)
    for _ in range(5):
        d, g = rng.standard_normal((6, 6)), rng.standard_normal((3, 3))
        u = wg.G @ g @ wg.G.T
        v = wg.BT @ d @ wg.BT.T
        y = wg.AT @ (u * v) @ wg.AT.T
        np.testing.assert_allclose(y, _direct(d, g), rtol=0, atol=1e-12)


def test_weight_transform_layout():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    u = wg.transform_weight(w)
    assert u.shape == (36, 5, 3) and u.dtype == np.float32
    o, c = 4, 2
    want = (wg.G @ w[o, c].astype(np.float64) @ wg.G.T).reshape(-1)
    np.testing.assert_allclose(u[:, o, c], want, rtol=1e-6)


def _uses_winograd(compiled) -> bool:
    return "ember_wino_in_row(" in compiled.source and "ember_wino_out_tiles(" in compiled.source


# (C, O, (H, W), padding, bias, relu, residual)
CASES = [
    (16, 16, (16, 16), 1, True, False, False),
    (17, 19, (15, 21), 1, True, True, False),      # sides not multiples of 4, odd channels
    (28, 16, (16, 16), 1, True, False, False),     # groups of 8 and a last one of 4 lanes
    (130, 16, (13, 17), 1, True, False, False),    # chunks of 64, 64 and 2 channels
    (16, 33, (18, 17), 0, False, False, False),    # no padding, no bias
    (19, 16, (14, 16), 2, True, True, True),       # padding 2 (patches past the image)
    (32, 24, (30, 7), 1, True, False, True),       # tall and thin: one partial block per row
    (64, 64, (56, 56), 1, True, True, True),       # a ResNet-18 layer-1 conv
]


@pytest.mark.parametrize("c,o,hw,pad,bias,relu,res", CASES)
def test_winograd_conv(c, o, hw, pad, bias, relu, res):
    g, inputs = conv_graph(c, o, hw, (3, 3), 1, pad, bias=bias, relu=relu, residual=res)
    compiled = check(g, inputs)
    assert _uses_winograd(compiled)
    if relu or res:  # fused into the output transform, not a loop after it
        assert compiled.fusions


def test_large_channel_sum_stays_accurate():
    g, inputs = conv_graph(512, 16, (16, 16), (3, 3), 1, 1)
    assert _uses_winograd(check(g, inputs, batches=(1,)))


@pytest.mark.parametrize("c,o,hw,stride", [(16, 16, (8, 8), 1),     # 4 tiles: too few
                                           (8, 16, (32, 32), 1),    # 8 input channels
                                           (16, 16, (32, 32), 2)])  # strided
def test_small_or_strided_convs_take_the_gemm(c, o, hw, stride):
    g, inputs = conv_graph(c, o, hw, (3, 3), stride, 1, relu=True)
    assert not _uses_winograd(check(g, inputs))


def test_portable_build(monkeypatch):
    """Without AVX2 the transforms' vector code and partial-lane moves still agree."""
    monkeypatch.setattr(toolchain, "FLAGS", toolchain.FLAGS + ("-mno-avx2", "-mno-fma"))
    g, inputs = conv_graph(17, 19, (15, 21), (3, 3), 1, 1, relu=True, residual=True)
    assert _uses_winograd(check(g, inputs))


def test_resnet_block_matches_torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = torch.nn.Conv2d(32, 32, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(32)
            self.c2, self.b2 = torch.nn.Conv2d(32, 32, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(32)

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(y)) + x)

    m = Block().eval()
    for bn in (m.b1, m.b2):  # non-trivial folded batch norm
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 32, 28, 28)
    static = ember.compile(m, (x,))
    # and once for every image size: the Winograd form chosen at the example's 28 x 28
    dyn = ember.compile(m, (x,), dynamic={"x": {0: "n", 2: ("h", 1, 64), 3: ("w", 1, 64)}})
    for compiled, sizes in ((static, [(2, 28, 28)]), (dyn, [(2, 28, 28), (1, 5, 9), (3, 33, 17), (1, 1, 1)])):
        assert _uses_winograd(compiled)
        for n, h, w in sizes:
            x = torch.randn(n, 32, h, w)
            with torch.no_grad():
                want = m(x).numpy()
            got = compiled(x.numpy())
            assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), (n, h, w)


def _image_graph(c, o, residual=True):
    """A 3x3 conv (bias, residual add, ReLU) on an image of any size: n, h and w symbolic."""
    rng = np.random.default_rng(3)
    g = Graph()
    n, h, w = sym("n"), sym("h"), sym("w")
    x = g.add_input("x", TensorType(dtypes.f32, (n, c, h, w)))
    y = g.op("conv2d", [x, g.add_const(rng.standard_normal((o, c, 3, 3)).astype(np.float32), "w"),
                        g.add_const(rng.standard_normal(o).astype(np.float32), "b")],
             {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 1})
    if residual:
        y = g.op("add", [y, g.add_input("r", TensorType(dtypes.f32, (n, o, h, w)))])
    g.outputs = [g.op("relu", [y])]
    g.sym_ranges = {"n": (1, 8), "h": (1, 64), "w": (1, 64)}
    return g


def _check_sizes(g, compiled, sizes, c, o):
    rng = np.random.default_rng(4)
    for n, h, w in sizes:
        feed = [rng.standard_normal((n, c, h, w)).astype(np.float32)]
        feed += [rng.standard_normal((n, o, h, w)).astype(np.float32)] if len(g.inputs) > 1 else []
        want = interpret(g, feed)[0].astype(np.float64)
        got = compiled(*feed).astype(np.float64)
        assert np.abs(got - want).max() <= 1e-4 * max(np.abs(want).max(), 1e-30), (n, h, w)


def test_winograd_serves_an_image_of_any_size():
    # the form is chosen at the example's size (16 x 20: 20 tiles, worth it); the kernels take
    # the image size at run time, ragged tiles and images smaller than one tile included
    g = _image_graph(16, 24)
    ex = [np.zeros((1, 16, 16, 20), np.float32), np.zeros((1, 24, 16, 20), np.float32)]
    compiled = ember.compile(g, ex)
    assert _uses_winograd(compiled) and compiled.fusions
    _check_sizes(g, compiled, [(1, 16, 20), (2, 1, 1), (1, 3, 5), (1, 4, 4), (2, 7, 9), (1, 33, 18)], 16, 24)
    # an example too small for Winograd keeps the GEMM, which serves every size as well
    small = ember.compile(g, [np.zeros((1, 16, 4, 4), np.float32), np.zeros((1, 24, 4, 4), np.float32)])
    assert not _uses_winograd(small)
    _check_sizes(g, small, [(1, 16, 20), (1, 3, 5)], 16, 24)


def test_pixels_as_rows_serve_an_image_of_any_size():
    # 64 output channels at a 7x7 example: the pixels are the GEMM's rows (conv_rows_w packed)
    g = _image_graph(32, 64, residual=False)
    compiled = ember.compile(g, [np.zeros((1, 32, 7, 7), np.float32)])
    assert "conv_rows_w" in compiled.source and not _uses_winograd(compiled)
    _check_sizes(g, compiled, [(1, 7, 7), (2, 1, 1), (1, 5, 12), (3, 9, 3)], 32, 64)


def test_a_rebuilt_artifact_keeps_the_forms_compile_chose(tmp_path):
    g = _image_graph(16, 24)
    ex = [np.zeros((1, 16, 16, 20), np.float32), np.zeros((1, 24, 16, 20), np.float32)]
    compiled = ember.compile(g, ex)
    compiled.save(tmp_path / "m.ember")
    rebuilt = ember.load(tmp_path / "m.ember", rebuild=True)
    assert _uses_winograd(rebuilt) and rebuilt.size_hints == {"n": 1, "h": 16, "w": 20}
    # the same kernels, fused the same way, as the compiled model's
    assert rebuilt.source.count("EMBER_KERNEL void kernel") == compiled.source.count("EMBER_KERNEL void kernel")
    _check_sizes(g, rebuilt, [(1, 16, 20), (2, 5, 3)], 16, 24)
