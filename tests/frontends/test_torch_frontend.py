"""The PyTorch frontend: imported graphs, run on the reference interpreter, match torch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils._pytree as pytree

import ember.ir as ir
from ember.errors import ExportError, UnsupportedOpError
from ember.frontends.torch import from_torch
from ember.ir.symbolic import sym


def _np(x):
    return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def check_graph(g):
    """Sound IR, and the text form round-trips exactly."""
    ir.verify(g)
    text = str(g)
    assert str(ir.parse(text, {c.name: c.data for c in g.constants})) == text


def run_both(model, g, inputs):
    """Interpret ``g`` and run ``model`` on the same inputs; compare every output."""
    if isinstance(inputs, dict):
        ref = model(**inputs)
        got = ir.interpret(g, {k: _np(v) for k, v in inputs.items()})
    else:
        ref = model(*inputs)
        got = ir.interpret(g, [_np(v) for v in inputs])
    flat = pytree.tree_leaves(ref)
    assert len(got) == len(flat)
    for a, b in zip(got, flat):
        assert a.shape == tuple(b.shape)
        np.testing.assert_allclose(a.astype(np.float64), _np(b).astype(np.float64), rtol=1e-5, atol=1e-5)
    return got, ref


def imported(model, inputs, dynamic=None):
    model = model.eval()
    g = from_torch(model, inputs, dynamic)
    check_graph(g)
    with torch.no_grad():
        run_both(model, g, inputs)
    return g


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------- MLPs and CNNs

def test_linear():
    g = imported(nn.Linear(10, 1), (torch.randn(1, 10),))
    assert [v.name for v in g.inputs] == ["input"]
    assert g.stats() == {"linear": 1}
    assert g.output_names == ["output0"]


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x):
        return self.fc3(F.gelu(self.fc2(torch.relu(self.fc1(x)))))


def test_mlp_names_and_sources():
    g = imported(MLP(), (torch.randn(3, 16),))
    assert {c.name for c in g.constants} >= {"fc1_weight", "fc1_bias", "fc3_weight"}
    assert g.stats() == {"linear": 3, "relu": 1, "gelu": 1}
    # every node says where it came from: this file's forward
    assert all(n.source and "test_torch_frontend.py" in n.source for n in g.nodes)
    assert "in forward: return self.fc3(" in g.nodes[0].source


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=8, bias=False)
        self.grouped = nn.Conv2d(8, 4, 1, groups=2)
        self.fc = nn.Linear(4, 5)
        with torch.no_grad():  # non-trivial running statistics
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 2)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = F.max_pool2d(x, 2)
        x = F.avg_pool2d(x, 3, stride=1, padding=1)
        x = self.grouped(self.dw(x))
        x = F.adaptive_avg_pool2d(x, (3, 3))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


def test_cnn():
    g = imported(CNN(), (torch.randn(2, 3, 16, 16),))
    s = g.stats()
    assert s["conv2d"] == 3 and s["batch_norm"] == 1 and s["max_pool2d"] == 1 and s["avg_pool2d"] == 1
    assert "adaptive_avg_pool2d" in s
    # unused buffers (num_batches_tracked) are not imported
    assert not any("num_batches" in c.name for c in g.constants)


def test_conv1d_and_pool_variants():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv1d(4, 6, 3, padding=1, stride=2)

        def forward(self, x, y):
            a = self.c(x).sum(-1)
            b = F.max_pool2d(y, 3, stride=2, padding=1, ceil_mode=True)
            c = F.avg_pool2d(y, 2, ceil_mode=True, count_include_pad=False)
            return a, b, c
    imported(M(), (torch.randn(2, 4, 9), torch.randn(1, 3, 7, 7)))


# ---------------------------------------------------------------- transformers

def test_transformer_encoder_layer():
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, batch_first=True, dim_feedforward=64)
    g = imported(layer, (torch.randn(2, 5, 32),))
    assert g.stats()["layer_norm"] == 2 and g.stats()["softmax"] == 1


def _bert(layers=2):
    from transformers import BertConfig, BertModel
    cfg = BertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=64, vocab_size=100)
    return BertModel(cfg).eval()


def _bert_inputs(b, s, pad):
    ids = torch.randint(0, 100, (b, s))
    mask = torch.ones(b, s, dtype=torch.long)
    mask[-1, s - pad:] = 0  # the last sequence is padded
    return {"input_ids": ids, "attention_mask": mask}


def test_bert():
    model = _bert()
    inputs = _bert_inputs(2, 7, 3)
    g = imported(model, inputs)
    assert [v.name for v in g.inputs] == ["input_ids", "attention_mask"]
    assert g.meta["input_names"] == ["input_ids", "attention_mask"]
    assert g.meta["kwarg_inputs"] == ["input_ids", "attention_mask"]
    assert g.output_names == ["last_hidden_state", "pooler_output"]
    outs = ir.interpret(g, {k: _np(v) for k, v in inputs.items()})
    rebuilt = pytree.tree_unflatten([torch.from_numpy(o) for o in outs], g.meta["torch_out_spec"])
    assert type(rebuilt).__name__ == type(model(**inputs)).__name__
    assert rebuilt.pooler_output.shape == (2, 32)


def test_bert_dynamic_batch_and_seq():
    model = _bert(layers=1)
    dyn = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    g = from_torch(model, _bert_inputs(2, 7, 3), dynamic=dyn)
    check_graph(g)
    assert g.inputs[0].shape == (sym("batch"), sym("seq"))
    assert g.sym_ranges["seq"][1] == 512  # torch found the position-embedding bound
    with torch.no_grad():
        for b, s in [(2, 7), (3, 11), (1, 4)]:
            run_both(model, g, _bert_inputs(b, s, 2))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_decoder_models(arch):
    # GPT-2 also covers the fallback to the undecomposed graph (torch's re-trace fails there);
    # Llama covers rotary embeddings, RMSNorm, SiLU MLPs and grouped-query attention
    import transformers as tf
    if arch == "gpt2":
        cfg = tf.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=32)
        model = tf.GPT2Model(cfg)
    else:
        cfg = tf.LlamaConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=64, vocab_size=100)
        model = tf.LlamaModel(cfg)
    model.config.use_cache = False  # a KV cache object is not a tensor output
    g = imported(model, _bert_inputs(2, 6, 2))
    assert g.output_names == ["last_hidden_state"]


def test_sdpa_and_causal_attention():
    class Attn(nn.Module):
        def forward(self, q, k, v, mask):
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            b = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return a + b
    q, k, v = (torch.randn(2, 2, 5, 8) for _ in range(3))
    imported(Attn(), (q, k, v, torch.rand(5, 5) > 0.3))


# ---------------------------------------------------------------- dynamic shapes

def test_mlp_dynamic_batch():
    model = MLP().eval()
    g = from_torch(model, (torch.randn(4, 16),), dynamic={"x": {0: "batch"}})
    check_graph(g)
    assert g.inputs[0].shape == (sym("batch"), 16)
    assert g.outputs[0].shape == (sym("batch"), 4)
    assert g.sym_ranges["batch"] == (1, 2**31 - 1)
    with torch.no_grad():
        for n in (1, 3, 7):
            run_both(model, g, (torch.randn(n, 16),))


def test_dynamic_reshape_is_symbolic():
    class M(nn.Module):
        def forward(self, x):
            b, s, d = x.shape
            y = (x.reshape(b * s, d) * 2).view(b, s, 2, d // 2).permute(0, 2, 1, 3)
            return y.reshape(b * 2, -1)
    g = from_torch(M(), (torch.randn(2, 3, 8),), dynamic={"x": {0: ("b", 1, 64), 1: "s"}})
    check_graph(g)
    assert g.sym_ranges["b"] == (1, 64)
    shapes = [n.attrs["shape"] for n in g.nodes if n.op == "reshape"]
    assert (sym("b") * sym("s"), 8) in shapes
    for b, s in [(1, 5), (3, 2)]:
        run_both(M(), g, (torch.randn(b, s, 8),))


def test_dynamic_dim_of_size_one_is_explained():
    with pytest.raises(ExportError, match="specializes sizes 0 and 1"):
        from_torch(MLP(), (torch.randn(1, 16),), dynamic={"x": {0: "batch"}})


# ---------------------------------------------------------------- op coverage

class Misc(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.head = nn.Linear(6, 10, bias=False)
        self.head.weight = self.emb.weight  # tied weights: one constant

    def forward(self, x, ids, mask, n: int = 2):
        a, b, c = torch.split(x, [2, 3, 1], dim=-1)
        y = torch.cat([c, a, b * n], dim=-1)                       # int scalar promotion
        y = y.masked_fill(mask.unsqueeze(-1), -1e4)
        y = y[:, 1:-1]
        z = torch.where(y > 0, y.abs().sqrt().clamp(max=2.0), torch.sigmoid(y))
        z = z + ids[:, :4, None] / 3                               # int tensor / int -> float
        z = z.pow(2) - torch.rsqrt(z.abs() + 1) + F.silu(z) * torch.tanh(z)
        w = self.head(self.emb(ids))                               # [B, S, 10]
        idx = torch.argmax(w, dim=-1)
        top = torch.gather(w, 2, idx.unsqueeze(-1)).squeeze(-1)
        m, am = w.max(dim=1)
        s = torch.stack([w.amax(-1), w.mean(-1), w.sum(-1)], dim=0)
        e = w.exp().log_softmax(-1).softmax(-1).var(dim=-1, keepdim=True)
        sel = w[:, 0] + w.select(1, -1) + torch.index_select(w, 1, torch.tensor([0, 2]))[:, 1]
        pad = F.pad(z, (1, 2, 0, 1), value=0.5)
        ar = torch.arange(z.shape[1]).float() + torch.full((z.shape[1],), 2.0) + torch.zeros(z.shape[1])
        chunks = torch.chunk(w, 2, dim=-1)
        g2 = F.gelu(z, approximate="tanh") + F.leaky_relu(z, 0.1) + F.hardswish(z) + F.elu(z)
        q = (ids % 3 == 0).to(torch.float32) + (ids // 3).float() + ids.float().floor()
        r = w[torch.arange(w.shape[0])[:, None], :, idx]           # advanced indexing: split dims
        r = r.sum(-1) + w[:, idx[0] % 5].sum(-1).sum(-1)[:, None] + w[:, torch.tensor([-1, 0])].sum()
        return (z, top, m, am, s, e, sel, pad, ar, chunks[1], g2, q, r, idx.to(torch.int32),
                w.transpose(0, 1).contiguous().view(-1, 10).t(), torch.any(mask, 1), z.repeat(1, 2, 1))


def test_many_ops():
    x = torch.randn(2, 6, 6)
    ids = torch.stack([torch.randperm(10)[:5] for _ in range(2)])  # no ties for max/argmax
    mask = torch.rand(2, 6) > 0.5
    g = imported(Misc(), (x, ids, mask))
    assert sum(1 for c in g.constants if c.shape == (10, 6)) == 1  # tied weight imported once
    assert [v.name for v in g.inputs] == ["x", "ids", "mask"]


def test_dict_and_nested_outputs():
    class M(nn.Module):
        def forward(self, x):
            return {"double": x * 2, "pair": (x + 1, x.sum())}
    g = imported(M(), (torch.randn(3),))
    assert g.output_names == ["double", "pair_0", "pair_1"]
    outs = ir.interpret(g, [np.ones(3, np.float32)])
    tree = pytree.tree_unflatten(outs, g.meta["torch_out_spec"])
    assert set(tree) == {"double", "pair"} and tree["pair"][1] == 3.0


def test_integer_and_bool_inputs_keep_dtypes():
    class M(nn.Module):
        def forward(self, a, b):
            return (a + b, a > 1.5, (a * 0.5).to(torch.float16))
    g = imported(M(), (torch.arange(6).reshape(2, 3), torch.ones(3, dtype=torch.bool)))
    assert [str(v.dtype) for v in g.outputs] == ["i64", "bool", "f16"]


# ---------------------------------------------------------------- failures

class Unsupported(nn.Module):
    def forward(self, x):
        y = torch.fft.rfft(x).abs()
        return torch.linalg.det(x) + y.sum()


def test_unsupported_ops_are_all_listed():
    with pytest.raises(UnsupportedOpError) as info:
        from_torch(Unsupported(), (torch.randn(2, 3, 3),))
    ops = {u["op"] for u in info.value.unsupported}
    assert "aten._fft_r2c.default" in ops and any("det" in o for o in ops)
    for u in info.value.unsupported:
        assert "test_torch_frontend.py" in u["source"] and u["node"]
    assert "fft" in str(info.value) and "det" in str(info.value)


def test_export_failure_is_wrapped():
    class DataDependent(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # Python control flow on a tensor value
                return x * 2
            return x
    with pytest.raises(ExportError, match="torch.export failed for DataDependent") as info:
        from_torch(DataDependent(), (torch.randn(3),))
    assert "Hint:" in str(info.value)


def test_bad_dynamic_name():
    from ember.errors import InputError
    with pytest.raises(InputError, match="'y'"):
        from_torch(MLP(), (torch.randn(2, 16),), dynamic={"y": {0: "batch"}})
