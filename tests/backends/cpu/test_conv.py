"""conv2d on the CPU against the numpy reference: odd sizes, every lowering path, fused epilogues.

Paths: groups = 1 float32 is one GEMM whose B panels are packed from the image (implicit
im2col, backends/cpu/gemm.py ``ember_pack_img``), or reads a 1x1 stride-1 input as a matrix;
a grouped convolution with at least 4 outputs per group is a GEMM per (image, group), with
the group as a batch dim; depthwise ones are loop-IR reductions. Bias, a residual add and ReLU are
fused into the GEMM epilogue at opt_level 2. Every case runs batch 1 and batch 3 through one
compiled model (a symbolic batch).
"""
import numpy as np
import pytest

import ember
from ember.ir import Graph, TensorType, dtypes, interpret, sym

F32 = dtypes.f32
rng = np.random.default_rng(7)


def rand(shape):
    return rng.uniform(-1, 1, size=shape).astype(np.float32)


def conv_graph(c, o, hw, k, stride=1, pad=0, dil=1, groups=1, bias=True, relu=False, residual=False):
    h, w = hw
    g = Graph()
    x = g.add_input("x", TensorType(F32, (sym("n"), c, h, w)))
    args = [x, g.add_const(rand((o, c // groups, k[0], k[1])), "w")]
    if bias:
        args.append(g.add_const(rand((o,)), "b"))
    y = g.op("conv2d", args, {"stride": (stride, stride), "padding": (pad, pad),
                              "dilation": (dil, dil), "groups": groups})
    ho, wo = y.type.shape[2], y.type.shape[3]
    inputs = [(c, h, w)]
    if residual:
        y = g.op("add", [y, g.add_input("r", TensorType(F32, (sym("n"), o, ho, wo)))])
        inputs.append((o, ho, wo))
    if relu:
        y = g.op("relu", [y])
    g.outputs = [y]
    return g, inputs


def check(g, inputs, batches=(1, 3)):
    compiled = ember.compile(g, opt_level=2)
    for n in batches:
        feed = [rand((n,) + s) for s in inputs]
        want = interpret(g, feed)[0].astype(np.float64)
        got = compiled.run_numpy(feed)[0].astype(np.float64)
        assert got.shape == want.shape
        rel = np.abs(got - want).max() / max(np.abs(want).max(), 1e-30) if want.size else 0.0
        assert rel <= 1e-4, f"batch {n}: relative error {rel:.2e}"
    return compiled


# (C, O, (H, W), (KH, KW), stride, padding, dilation)
GEMM_CASES = [
    (1, 1, (1, 1), (1, 1), 1, 0, 1),
    (3, 7, (1, 1), (3, 3), 1, 1, 1),       # every tap but the centre is padding
    (3, 64, (13, 13), (7, 7), 2, 3, 1),    # the ResNet stem, small
    (7, 5, (7, 7), (5, 5), 1, 2, 1),
    (7, 64, (13, 7), (3, 3), 2, 1, 1),     # non-square, stride 2
    (64, 7, (13, 13), (3, 3), 1, 1, 2),    # dilation
    (64, 64, (7, 7), (3, 3), 1, 1, 1),
    (64, 65, (13, 13), (1, 1), 1, 0, 1),   # 1x1: the image is the matrix
    (64, 33, (13, 13), (1, 1), 2, 0, 1),   # 1x1 stride 2: packed from the image
    (3, 16, (56, 56), (3, 3), 1, 1, 1),    # wide rows: the one-row fast path of the packer
    (7, 9, (56, 17), (5, 5), 2, 0, 1),     # no padding, ragged windows at the end
    (3, 200, (7, 7), (3, 3), 1, 1, 1),     # many output channels, small image: rows split, B packed once
    (300, 8, (5, 5), (3, 3), 1, 1, 1),     # K = 2700 > one K block
    (1, 1, (13, 13), (1, 7), 1, 0, 1),     # a non-square kernel
    (5, 6, (17, 40), (3, 3), 3, 2, 1),     # stride 3: the packer's lane-by-lane path
    (4, 8, (9, 37), (3, 3), 2, 1, 3),      # stride 2 with dilation 3, windows clipped on both sides
]


@pytest.mark.parametrize("c,o,hw,k,s,p,d", GEMM_CASES)
def test_conv_gemm(c, o, hw, k, s, p, d):
    check(*conv_graph(c, o, hw, k, s, p, d))


@pytest.mark.parametrize("relu,residual,bias", [(True, False, True), (True, True, True), (False, True, False)])
def test_fused_epilogue_is_one_kernel(relu, residual, bias):
    compiled = check(*conv_graph(7, 13, (13, 13), (3, 3), 2, 1, bias=bias, relu=relu, residual=residual))
    assert compiled.kernels == 1  # no im2col buffer, bias/add/ReLU in the GEMM's epilogue


# small images with many output channels: pixels as the GEMM's rows (rules_conv.rows_form)
ROWS_CASES = [
    (64, 512, (7, 7), (3, 3), 1, 1, 1, True, True),    # ResNet-18's last stage, relu + residual
    (32, 64, (14, 14), (3, 3), 2, 1, 1, True, False),  # stride 2 down to 7x7
    (16, 48, (9, 5), (3, 3), 1, 0, 1, False, True),    # no padding, a 7x3 output
    (8, 40, (3, 3), (3, 3), 1, 1, 1, False, False),    # 9 pixels
    (5, 64, (7, 7), (3, 3), 1, 2, 2, True, False),     # dilation
    (7, 20, (1, 1), (3, 3), 1, 1, 1, True, True),      # one pixel: a GEMV
]


@pytest.mark.parametrize("c,o,hw,k,s,p,d,relu,res", ROWS_CASES)
def test_small_image_takes_pixels_as_rows(c, o, hw, k, s, p, d, relu, res):
    compiled = check(*conv_graph(c, o, hw, k, s, p, d, relu=relu, residual=res))
    assert "conv_rows_w_packed" in compiled.source


def test_rows_form_only_where_it_fills_panels_better():
    from ember.lower.rules_conv import rows_form
    assert rows_form(512, 49) and rows_form(64, 1) and rows_form(256, 14 * 14)
    assert not rows_form(13, 49) and not rows_form(64, 56 * 56) and not rows_form(64, 28 * 28)


@pytest.mark.parametrize("c,o,hw,k,s,p,groups", [
    (2, 4, (7, 7), (3, 3), 1, 1, 2),          # 2 outputs per group: a reduction
    (6, 4, (13, 13), (5, 5), 2, 2, 2),
    (8, 8, (13, 13), (3, 3), 1, 1, 2),        # 4 outputs per group: a GEMM per (image, group)
    (16, 96, (7, 9), (3, 3), 2, 1, 4),
    (64, 64, (14, 14), (1, 1), 1, 0, 8),
    (7, 7, (13, 13), (3, 3), 1, 1, 7),        # depthwise
    (64, 64, (56, 56), (3, 3), 2, 1, 64),     # depthwise, stride 2
    (3, 6, (7, 7), (7, 7), 1, 3, 3),          # depthwise with multiplier 2
])
def test_grouped_and_depthwise(c, o, hw, k, s, p, groups):
    check(*conv_graph(c, o, hw, k, s, p, groups=groups, relu=True))


def test_conv_reads_a_strided_view():
    # a permuted input is not contiguous: it is stored once, then packed like any image
    g = Graph()
    x = g.add_input("x", TensorType(F32, (sym("n"), 9, 11, 5)))
    xt = g.op("permute", [x], {"perm": (0, 3, 1, 2)})          # [n, 5, 9, 11]
    y = g.op("conv2d", [xt, g.add_const(rand((6, 5, 3, 3)), "w")],
             {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 1})
    g.outputs = [y]
    check(g, [(9, 11, 5)])


def test_symbolic_image_size():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (1, 3, sym("h"), sym("w"))))
    y = g.op("conv2d", [x, g.add_const(rand((8, 3, 3, 3)), "w")],
             {"stride": (2, 2), "padding": (1, 1), "dilation": (1, 1), "groups": 1})
    g.outputs = [y]
    compiled = ember.compile(g, opt_level=2)
    for h, w in ((7, 7), (30, 17), (1, 1)):
        feed = [rand((1, 3, h, w))]
        np.testing.assert_allclose(compiled.run_numpy(feed)[0], interpret(g, feed)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (7, 2, 3)])
def test_portable_packer(monkeypatch, k, s, p):
    # the plain-C image packer and micro-kernels, as built for a CPU without AVX2/FMA
    from ember.backends.cpu import toolchain
    monkeypatch.setattr(toolchain, "FLAGS", toolchain.FLAGS + ("-mno-avx2", "-mno-fma"))
    check(*conv_graph(5, 9, (19, 23), (k, k), s, p, relu=True, residual=True))
