"""End to end: PyTorch and HuggingFace models compiled by Ember against PyTorch's own output."""
import numpy as np
import pytest
import torch

import ember
from ember.backends.cpu import toolchain


def assert_close(got, want, rtol=1e-5):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    scale = max(np.abs(want).max(), 1e-6)
    err = np.abs(got - want).max() / scale
    assert err <= rtol, f"relative error {err:.2e} > {rtol:.0e}"


def eager(model, *inputs):
    with torch.no_grad():
        return model(*inputs)


def test_primer_linear():
    torch.manual_seed(0)
    model = torch.nn.Linear(10, 1).eval()
    x = torch.randn(1, 10)
    compiled = ember.compile(model, (x,))
    y = compiled(x)
    assert isinstance(y, torch.Tensor) and y.shape == (1, 1)
    assert_close(y, eager(model, x))
    y_np = compiled(x.numpy())
    assert isinstance(y_np, np.ndarray)
    assert_close(y_np, eager(model, x))


def test_mlp_dynamic_batch_compiles_once():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                                torch.nn.GELU(), torch.nn.Linear(64, 10)).eval()
    builds = toolchain.stats["compiles"] + toolchain.stats["cache_hits"]
    compiled = ember.compile(model, (torch.randn(4, 32),), dynamic={"input": {0: "batch"}})
    for n in (1, 3, 17, 64, 511):
        x = torch.randn(n, 32)
        assert_close(compiled(x), eager(model, x))
    assert toolchain.stats["compiles"] + toolchain.stats["cache_hits"] == builds + 1


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4)
        self.bn2 = torch.nn.BatchNorm2d(8)
        self.pool = torch.nn.MaxPool2d(2)
        self.avg = torch.nn.AvgPool2d(2, stride=1)
        self.head = torch.nn.Linear(8 * 2 * 2, 5)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.avg(torch.relu(self.bn2(self.conv2(x))))
        x = torch.nn.functional.adaptive_avg_pool2d(x, (2, 2))
        return self.head(torch.flatten(x, 1))


def test_small_cnn():
    torch.manual_seed(2)
    model = SmallCNN()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    compiled = ember.compile(model, (x,))
    assert_close(compiled(x), eager(model, x))


def test_transformer_encoder_layer():
    torch.manual_seed(3)
    layer = torch.nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64,
                                             batch_first=True).eval()
    x = torch.randn(2, 7, 32)
    compiled = ember.compile(layer, (x,), dynamic={"src": {1: "seq"}})
    assert_close(compiled(x), eager(layer, x))
    x2 = torch.randn(2, 13, 32)
    assert_close(compiled(x2), eager(layer, x2))


def test_hf_bert_with_padding_mask():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(4)
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, vocab_size=100, max_position_embeddings=64)
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 100, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.int64)
    mask[1, 6:] = 0
    compiled = ember.compile(model, (ids, mask),
                             dynamic={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}})
    out = compiled(ids, mask)
    want = eager(model, ids, mask)
    assert type(out) is type(want)
    assert_close(out.last_hidden_state, want.last_hidden_state)
    assert_close(out.pooler_output, want.pooler_output)
    ids2, mask2 = torch.randint(0, 100, (3, 17)), torch.ones(3, 17, dtype=torch.int64)
    mask2[0, 10:] = 0
    assert_close(compiled(ids2, mask2).last_hidden_state, eager(model, ids2, mask2).last_hidden_state)


def test_inference_engine_compiles_once_per_signature():
    torch.manual_seed(5)
    model = torch.nn.Linear(10, 1).eval()
    engine = ember.InferenceEngine()
    x = torch.randn(1, 10)
    for _ in range(3):
        assert_close(engine.run_inference(model, x), eager(model, x))
    assert engine.compilations == 1
    x3 = torch.randn(3, 10)
    assert_close(engine.run_inference(model, x3), eager(model, x3))
    assert engine.compilations == 2


def test_unsupported_ops_are_all_listed():
    class Odd(torch.nn.Module):
        def forward(self, x):
            a = torch.fft.rfft(x).abs()          # unsupported
            b = torch.linalg.det(x[:, :4, :4])    # unsupported
            return a.sum() + b.sum()

    with pytest.raises(ember.UnsupportedOpError) as e:
        ember.compile(Odd(), (torch.randn(2, 4, 4),))
    msg = str(e.value)
    assert "aten._fft_r2c" in msg and "aten._linalg_det" in msg
    assert msg.count("test_torch_models.py:") >= 2      # each with its source line
    assert len(e.value.unsupported) == 2
