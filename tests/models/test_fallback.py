"""Unsupported ops: all listed at once by default; with fallback="torch" the graph is split,
the unsupported parts run in PyTorch, one warning lists them, and results stay correct."""
import warnings

import numpy as np
import pytest
import torch

import ember
from ember.backends.cpu import toolchain
from ember.fallback import FallbackModel, FallbackWarning


def close(got, want, rtol=1e-5):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= rtol * max(np.abs(want).max(), 1e-6)


class Router(torch.nn.Module):
    """A mixture-of-experts style router: top-k (unsupported) between supported layers."""

    def __init__(self, d=16, experts=4):
        super().__init__()
        self.gate = torch.nn.Linear(d, experts)
        self.experts = torch.nn.Linear(d, experts * d)
        self.out = torch.nn.Linear(d, d)
        self.e, self.d = experts, d

    def forward(self, x):
        probs = torch.softmax(self.gate(x), -1)
        w, idx = torch.topk(probs, 2, dim=-1)                       # unsupported
        w = w / w.sum(-1, keepdim=True)
        ys = self.experts(x).reshape(*x.shape[:-1], self.e, self.d)
        picked = torch.gather(ys, -2, idx.unsqueeze(-1).expand(*idx.shape, self.d))
        h = (picked * w.unsqueeze(-1)).sum(-2)
        return self.out(torch.relu(h))


class TwoOdd(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        f = torch.fft.rfft(h).abs()                          # unsupported (complex)
        d = torch.linalg.det(h[:, :4].reshape(-1, 2, 2))    # unsupported
        return self.b(h) + f.sum(-1, keepdim=True), d.sum() * h.mean()


def test_default_lists_every_unsupported_op_at_once():
    with pytest.raises(ember.UnsupportedOpError) as e:
        ember.compile(TwoOdd().eval(), (torch.randn(3, 8),))
    msg = str(e.value)
    assert "aten._fft_r2c" in msg and "aten._linalg_det" in msg
    assert msg.count("test_fallback.py:") >= 2  # each with its source line
    with pytest.raises(ember.UnsupportedOpError, match="aten.topk"):
        ember.compile(Router().eval(), (torch.randn(2, 5, 16),))


def test_fallback_router_dynamic_correct_and_warns_once():
    torch.manual_seed(0)
    model = Router().eval()
    n0 = toolchain.stats["compiles"] + toolchain.stats["cache_hits"]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        c = ember.compile(model, (torch.randn(2, 5, 16),), fallback="torch",
                          dynamic={"x": {0: "batch", 1: "seq"}})
        outs = []
        for b, s in [(1, 1), (3, 3), (17, 17), (64, 3), (2, 511)]:
            x = torch.randn(b, s, 16)
            with torch.no_grad():
                close(c(x), model(x))
            outs.append(c(x.numpy()))
    fw = [x for x in w if issubclass(x.category, FallbackWarning)]
    assert len(fw) == 1, [str(x.message) for x in w]
    assert "aten.topk.default" in str(fw[0].message)
    assert isinstance(c, FallbackModel) and len(c.segments) == 2
    assert isinstance(outs[-1], np.ndarray)  # numpy in, numpy out
    # one build per Ember segment, none per size
    assert toolchain.stats["compiles"] + toolchain.stats["cache_hits"] == n0 + len(c.segments)


def test_fallback_complex_values_stay_in_torch():
    torch.manual_seed(1)
    model = TwoOdd().eval()
    with pytest.warns(FallbackWarning, match=r"aten\._fft_r2c.*aten\._linalg_det"):
        c = ember.compile(model, (torch.randn(3, 8),), fallback="torch", dynamic={"x": {0: "batch"}})
    for n in (1, 3, 17):
        x = torch.randn(n, 8)
        with torch.no_grad():
            want = model(x)
        got = c(x)
        close(got[0], want[0])
        close(got[1], want[1])
    assert "aten.abs.default" in c.unsupported_ops  # abs of a complex tensor moved to torch too


def test_chain_of_unsupported_ops_makes_one_segment_per_gap():
    class Chain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l = torch.nn.ModuleList(torch.nn.Linear(6, 6) for _ in range(3))

        def forward(self, x):
            x = torch.sort(self.l[0](x), dim=-1).values       # unsupported
            side = torch.tanh(x) * 2                          # independent of the next gap
            x = torch.cumprod(self.l[1](x), dim=-1)           # unsupported
            return self.l[2](x) + side

    torch.manual_seed(2)
    model = Chain().eval()
    with pytest.warns(FallbackWarning):
        c = ember.compile(model, (torch.randn(4, 6),), fallback="torch")
    assert len(c.segments) == 3
    x = torch.randn(4, 6)
    with torch.no_grad():
        close(c(x), model(x))


def test_fallback_with_hf_compile(monkeypatch):
    transformers = pytest.importorskip("transformers")
    from ember import hf

    class Odd(transformers.BertModel):  # an HF model with one unsupported op in its output
        def forward(self, input_ids, attention_mask=None, **kw):
            out = super().forward(input_ids, attention_mask=attention_mask, **kw)
            out.pooler_output = torch.sort(out.pooler_output, dim=-1).values
            return out

    torch.manual_seed(3)
    cfg = transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, vocab_size=64, max_position_embeddings=64)
    model = Odd(cfg).eval()
    with pytest.warns(FallbackWarning, match="aten.sort"):
        c = hf.compile_hf(model, fallback="torch")
    for b, s in [(1, 16), (2, 37)]:
        inputs = hf.example_inputs(model, batch=b, seq=s)
        with torch.no_grad():
            want = model(**inputs)
        got = c(**inputs)
        assert type(got) is type(want)
        close(got.last_hidden_state, want.last_hidden_state, 1e-4)
        close(got.pooler_output, want.pooler_output, 1e-4)


def test_fallback_needs_a_torch_model():
    with pytest.raises(ember.EmberError, match="fallback must be"):
        ember.compile(torch.nn.Linear(2, 2), (torch.randn(2, 2),), fallback="onnx")
