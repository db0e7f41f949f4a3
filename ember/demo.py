"""The models of ``ember demo`` and the first benchmark: built here, no downloads."""
from __future__ import annotations


def linear():
    """The primer's model: nn.Linear(10, 1) at batch 1."""
    import torch
    torch.manual_seed(0)
    return torch.nn.Linear(10, 1).eval(), (torch.randn(1, 10),)


def mlp(batch: int = 1, width: int = 1024):
    """Three linear layers with GELU."""
    import torch
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(width, width), torch.nn.GELU(),
        torch.nn.Linear(width, width), torch.nn.GELU(),
        torch.nn.Linear(width, width)).eval()
    return model, (torch.randn(batch, width),)


def bert(batch: int = 1, seq: int = 32):
    """A small HuggingFace BertModel from BertConfig with random weights."""
    import torch
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=256, vocab_size=1000, max_position_embeddings=128)
    model = BertModel(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.int64)
    return model, (ids, mask)


MODELS = {"linear": linear, "mlp": mlp, "bert": bert}
