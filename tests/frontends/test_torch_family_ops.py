"""ATen ops the model families need beyond the core set (speech encoders' group norm,
ConvNeXt-V2's vector norm, U-Net / FPN / BEiT resizing, slice_scatter, ...), compiled and
compared with PyTorch, with dynamic dims where the op allows them."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ember


def close(got, want, rtol=1e-5):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-6)
    assert err <= rtol, f"relative error {err:.2e}"


class Fn(torch.nn.Module):
    def __init__(self, fn, *params):
        super().__init__()
        self.fn = fn
        self.p = torch.nn.ParameterList(torch.nn.Parameter(p) for p in params)

    def forward(self, x):
        return self.fn(x, *self.p)


def check(fn, example, others=(), dynamic=None, params=(), rtol=1e-5):
    model = Fn(fn, *params).eval()
    c = ember.compile(model, (example,), dynamic=dynamic)
    for x in (example,) + tuple(others):
        with torch.no_grad():
            want = model(x)
        got = c(x)
        for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            close(g, w, rtol)


def test_group_norm_and_vector_norm():
    torch.manual_seed(0)
    w, b = torch.randn(8), torch.randn(8)

    def f(x, w, b):
        g = F.group_norm(x, 4, w, b, eps=1e-5)                       # [N, C, L]: wav2vec2
        n2 = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
        n1 = torch.linalg.vector_norm(x, ord=1, dim=-1)
        ninf = torch.linalg.vector_norm(x, ord=float("inf"), dim=1)
        n3 = torch.linalg.vector_norm(x, ord=3, dim=-1)
        return g, n2, n1, ninf, n3

    check(f, torch.randn(2, 8, 7), [torch.randn(1, 8, 3), torch.randn(3, 8, 17)],
          dynamic={"x": {0: "batch", 2: "length"}}, params=(w, b), rtol=1e-4)
    # 4-D input (diffusion U-Nets)
    check(lambda x, w, b: F.group_norm(x, 2, w, b), torch.randn(2, 8, 5, 3), params=(w, b), rtol=1e-4)


@pytest.mark.parametrize("mode,align", [("nearest", None), ("bilinear", False), ("bilinear", True)])
def test_upsample_static_and_dynamic(mode, align):
    torch.manual_seed(1)
    kw = {} if align is None else {"align_corners": align}
    # by scale factor: dynamic sizes follow the input
    check(lambda x: F.interpolate(x, scale_factor=2, mode=mode, **kw), torch.randn(2, 3, 5, 4),
          [torch.randn(1, 3, 3, 7), torch.randn(3, 3, 17, 1)], dynamic={"x": {0: "b", 2: "h", 3: "w"}})
    # to a fixed size (BEiT's relative position tables, FPN merges), up and down
    check(lambda x: F.interpolate(x, size=(7, 3), mode=mode, **kw), torch.randn(2, 3, 5, 6))
    check(lambda x: F.interpolate(x, scale_factor=1.5, mode=mode, **kw), torch.randn(1, 2, 6, 4))


def test_1d_resize_slice_scatter_and_small_math():
    torch.manual_seed(2)

    def f(x):
        up = F.interpolate(x, scale_factor=3, mode="linear", align_corners=False)
        near = F.interpolate(x, size=5, mode="nearest")
        y = x.clone()
        y[:, 1:3] = torch.tanh(x[:, 1:3])                          # slice_scatter
        pooled = torch.nn.functional.adaptive_avg_pool1d(x, 1)   # as_strided after decomposition
        return up, near, y, pooled, torch.log1p(x.abs()), torch.expm1(x), torch.trunc(3 * x)

    check(f, torch.randn(2, 4, 6), [torch.randn(3, 4, 11)], dynamic={"x": {0: "b", 2: "n"}}, rtol=1e-4)
