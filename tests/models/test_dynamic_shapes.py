"""Dynamic shapes end to end: one compile serves every size in the declared range.

Sizes 1, 3, 17, 64 and 511 run through the same compiled model (builds are counted with
ember.backends.cpu.toolchain.stats); sizes outside the range and inputs whose dims disagree
fail with an error naming the input, the dim and the allowed values.
"""
import numpy as np
import pytest
import torch

import ember
from ember.backends.cpu import toolchain
from ember.ir.symbolic import evaluate, floordiv, mod, sym

SIZES = (1, 3, 17, 64, 511)


def builds() -> int:
    return toolchain.stats["compiles"] + toolchain.stats["cache_hits"]


def close(got, want, rtol=1e-4):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= rtol * max(np.abs(want).max(), 1e-6)


class TinyEncoder(torch.nn.Module):
    """Embedding + attention + layer norm + mean pooling: batch and sequence both vary."""

    def __init__(self, vocab=50, d=16):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d)
        self.layer = torch.nn.TransformerEncoderLayer(d, 2, 32, batch_first=True, dropout=0.0)
        self.head = torch.nn.Linear(d, 3)

    def forward(self, ids, mask):
        h = self.layer(self.emb(ids))
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp(min=1.0)), h


def test_batch_and_seq_every_size_one_compile():
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    ids, mask = torch.randint(0, 50, (2, 5)), torch.ones(2, 5, dtype=torch.int64)
    n0 = builds()
    c = ember.compile(model, (ids, mask), dynamic={"ids": {0: "batch", 1: "seq"},
                                                   "mask": {0: "batch", 1: "seq"}})
    assert builds() == n0 + 1
    assert [str(d) for d in c.graph.inputs[0].shape] == ["batch", "seq"]
    # every size along each dim: (1, 1), (3, 3), (17, 17), (64, 64), then 511 x 2 and 2 x 511
    for b, s in [(n, n) for n in SIZES[:-1]] + [(511, 2), (2, 511)]:
        ids = torch.randint(0, 50, (b, s))
        mask = torch.ones(b, s, dtype=torch.int64)
        mask[0, s // 2 + 1:] = 0
        with torch.no_grad():
            want = model(ids, mask)
        got = c(ids, mask)
        close(got[0], want[0])
        close(got[1], want[1])
    assert builds() == n0 + 1  # every size ran on the one build


def test_cnn_dynamic_batch_and_image_size():
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    n0 = builds()
    c = ember.compile(model, (torch.randn(2, 3, 32, 32),),
                      dynamic={"input": {0: "batch", 2: ("h", 8, 512), 3: ("w", 8, 512)}})
    for n in SIZES:
        x = torch.randn(n, 3, 8, 8) if n > 17 else torch.randn(n, 3, 17 + n, 40 - n)
        with torch.no_grad():
            close(c(x), model(x))
    x = torch.randn(1, 3, 511, 64)
    with torch.no_grad():
        close(c(x), model(x))
    assert builds() == n0 + 1


def test_ranges_and_inconsistent_dims_are_named():
    torch.manual_seed(2)
    model = TinyEncoder().eval()
    ids, mask = torch.randint(0, 50, (2, 5)), torch.ones(2, 5, dtype=torch.int64)
    c = ember.compile(model, (ids, mask), dynamic={"ids": {0: ("batch", 1, 64), 1: ("seq", 2, 100)},
                                                   "mask": {0: ("batch", 1, 64), 1: ("seq", 2, 100)}})
    assert c.graph.sym_ranges == {"batch": (1, 64), "seq": (2, 100)}
    ok = c(torch.randint(0, 50, (64, 100)), torch.ones(64, 100, dtype=torch.int64))
    assert ok[0].shape == (64, 3)
    with pytest.raises(ember.EmberError, match=r"batch.*65.*\[1, 64\]"):
        c(torch.randint(0, 50, (65, 9)), torch.ones(65, 9, dtype=torch.int64))
    with pytest.raises(ember.EmberError, match=r"seq.*1.*\[2, 100\]"):
        c(torch.randint(0, 50, (3, 1)), torch.ones(3, 1, dtype=torch.int64))
    with pytest.raises(ember.EmberError, match=r"input 'mask' dim 1 \(seq\) is 8.*seq is 9"):
        c(torch.randint(0, 50, (3, 9)), torch.ones(3, 8, dtype=torch.int64))
    with pytest.raises(ember.EmberError, match=r"input 'ids'.*rank 2"):
        c(torch.randint(0, 50, (3,)), torch.ones(3, 8, dtype=torch.int64))


def test_example_of_size_one_on_a_dynamic_dim_is_a_clear_error():
    model = torch.nn.Linear(4, 2).eval()
    with pytest.raises(ember.ExportError, match=r"'input' dim 0 .*size 1.*size >= 2"):
        ember.compile(model, (torch.randn(1, 4),), dynamic={"input": {0: "batch"}})


def test_dynamic_artifact_runs_every_size_with_numpy(tmp_path):
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.GELU(), torch.nn.Linear(12, 2)).eval()
    c = ember.compile(model, (torch.randn(4, 6),), dynamic={"input": {0: ("batch", 1, 511)}})
    c.save(tmp_path / "m.ember")
    loaded = ember.load(tmp_path / "m.ember")
    for n in SIZES:
        x = np.random.default_rng(n).standard_normal((n, 6)).astype(np.float32)
        with torch.no_grad():
            close(loaded(x), model(torch.from_numpy(x)))
    with pytest.raises(ember.EmberError, match=r"batch.*512.*\[1, 511\]"):
        loaded(np.zeros((512, 6), np.float32))


def test_hf_seq_range_follows_the_position_table():
    transformers = pytest.importorskip("transformers")
    from ember import hf
    torch.manual_seed(4)
    cfg = transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, vocab_size=64, max_position_embeddings=512)
    model = transformers.BertModel(cfg).eval()
    n0 = builds()
    c = hf.compile_hf(model)
    assert c.graph.sym_ranges["seq"][1] == 512
    for n in SIZES:
        inputs = hf.example_inputs(model, batch=2 if n > 64 else n, seq=n, seed=n)
        with torch.no_grad():
            want = model(**inputs)
        close(c(**inputs).last_hidden_state, want.last_hidden_state)
    assert builds() == n0 + 1
    with pytest.raises(ember.EmberError, match=r"seq.*513.*\[1, 512\]"):
        c(torch.zeros(1, 513, dtype=torch.int64))


def test_floor_division_of_strided_sizes_simplifies():
    # conv outputs ((h - 4) // 4 + 1) must equal torch's h // 4 for reshapes to line up
    h = sym("h")
    assert (h - 4) // 4 + 1 == h // 4
    assert floordiv(floordiv(h, 4), 2) == floordiv(h, 8)
    assert mod(4 * h + 6, 4) == mod(2, 4) == 2
    for e, f in [((h - 4) // 4 + 1, lambda x: (x - 4) // 4 + 1), ((-5 * h + 7) // 4, lambda x: (-5 * x + 7) // 4),
                 ((-5 * h + 7) % 4, lambda x: (-5 * x + 7) % 4), ((h // 3) // 5, lambda x: (x // 3) // 5)]:
        for x in range(-30, 60):
            assert evaluate(e, {"h": x}) == f(x)


def test_dynamic_bert_compiles_to_the_kernels_of_a_static_one():
    # HF builds its padding mask from aranges of the sequence length: with a symbolic length they
    # must still fold (the mask a broadcast row) and the FFN's GELU must still be the GEMM's epilogue
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    bert = transformers.BertModel(cfg, add_pooling_layer=False).eval()

    class Hidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = bert

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    model = Hidden().eval()
    ids, mask = torch.randint(0, 100, (2, 12)), torch.ones(2, 12, dtype=torch.int64)
    mask[1, 7:] = 0
    static = ember.compile(model, (ids, mask))
    dyn = ember.compile(model, (ids, mask), dynamic={"input_ids": {0: "batch", 1: "seq"},
                                                     "attention_mask": {0: "batch", 1: "seq"}})
    assert dyn.kernels == static.kernels
    assert not any(n.op == "logical_and" for n in dyn.graph.nodes)
    attn = [n for n in dyn.graph.nodes if n.op == "attention"]
    assert attn and all(n.inputs[3].producer.op == "expand" for n in attn)   # one mask row, broadcast
    labels = [k.label for k in dyn.profile(ids, mask, runs=1).kernels]
    assert sum(" gemm " in lb and "gelu %" in lb for lb in labels) == 2, labels
    for b, s in [(1, 1), (3, 17), (2, 64)]:
        ids = torch.randint(0, 100, (b, s))
        mask = torch.ones(b, s, dtype=torch.int64)
        mask[0, s // 2 + 1:] = 0
        with torch.no_grad():
            want = model(ids, mask)
        close(dyn(ids, mask), want)
