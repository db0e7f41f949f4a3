"""Models through the whole -O2 pipeline with verify=True, against PyTorch's own output."""
import pytest
import torch

import ember
from test_torch_models import SmallCNN, assert_close, eager

transformers = pytest.importorskip("transformers")


def ops_of(compiled):
    return compiled.graph.stats()


def test_bert_recognized_and_verified():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, vocab_size=100, max_position_embeddings=64)
    model = transformers.BertModel(cfg).eval()
    ids, mask = torch.randint(0, 100, (2, 9)), torch.ones(2, 9, dtype=torch.int64)
    mask[0, 5:] = 0
    compiled = ember.compile(model, (ids, mask), verify=True,
                             dynamic={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}})
    ops = ops_of(compiled)
    assert ops.get("attention") == 2 and "softmax" not in ops and "matmul" not in ops
    assert ops.get("linear") == 2 * 6 + 1
    want = eager(model, ids, mask)
    out = compiled(ids, mask)
    assert_close(out.last_hidden_state, want.last_hidden_state)
    assert_close(out.pooler_output, want.pooler_output)


def test_gpt2_verified():
    torch.manual_seed(1)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64)
    model = transformers.GPT2Model(cfg).eval()
    model.config.use_cache = False
    ids = torch.randint(0, 100, (2, 11))
    compiled = ember.compile(model, (ids,), verify=True)
    assert_close(compiled(ids).last_hidden_state, eager(model, ids).last_hidden_state)
    assert ops_of(compiled).get("gelu") == 2


def test_llama_verified():
    torch.manual_seed(2)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                   max_position_embeddings=64)
    model = transformers.LlamaModel(cfg).eval()
    model.config.use_cache = False
    ids = torch.randint(0, 100, (2, 11))
    compiled = ember.compile(model, (ids,), verify=True)
    assert_close(compiled(ids).last_hidden_state, eager(model, ids).last_hidden_state)
    assert ops_of(compiled).get("rms_norm") == 2 * 2 + 1


def test_cnn_batch_norm_folded_and_verified():
    torch.manual_seed(3)
    model = SmallCNN()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    compiled = ember.compile(model, (x,), verify=True)
    assert "batch_norm" not in ops_of(compiled)
    assert_close(compiled(x), eager(model, x))


def test_transformer_encoder_layer_verified():
    torch.manual_seed(4)
    layer = torch.nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True).eval()
    x = torch.randn(2, 7, 32)
    compiled = ember.compile(layer, (x,), verify=True)
    assert ops_of(compiled).get("attention") == 1
    assert_close(compiled(x), eager(layer, x))
