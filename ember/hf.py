"""HuggingFace ``transformers`` models: load, build example inputs, export with dynamic dims.

    compiled = ember.hf.compile_hf("path/to/model")              # from_pretrained on a local dir
    compiled = ember.hf.compile_hf(model)                         # an instance
    out = compiled(input_ids=ids, attention_mask=mask)            # same ModelOutput as model(...)

What HF models need for ``torch.export`` is handled here: ``use_cache=False`` (no KV-cache
objects in the outputs), ``return_dict=True``, eval mode, example inputs from the config (and
the tokenizer when there is one), dynamic batch / sequence / image dims with the ranges the
model allows (absolute position tables bound the sequence length). The family is read from the
model itself (``main_input_name``, ``config.is_encoder_decoder``, whether images are cut into
patches), not from a list of architectures, so families not named here work the same way.

``ZOO`` is a small registry of config builders (small random weights) used by the tests and
benchmarks: ``build_zoo_model("llama")``.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import EmberError, InputError, UnsupportedOpError

__all__ = ["compile_hf", "HFCompiledModel", "example_inputs", "dynamic_axes", "load_hf",
           "ZOO", "build_zoo_model", "TASKS"]

# task -> Auto class name (loading from a directory)
TASKS = {
    None: "AutoModel", "feature-extraction": "AutoModel", "base": "AutoModel",
    "text-classification": "AutoModelForSequenceClassification",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "fill-mask": "AutoModelForMaskedLM", "masked-lm": "AutoModelForMaskedLM",
    "question-answering": "AutoModelForQuestionAnswering",
    "text-generation": "AutoModelForCausalLM", "causal-lm": "AutoModelForCausalLM",
    "text2text-generation": "AutoModelForSeq2SeqLM", "seq2seq-lm": "AutoModelForSeq2SeqLM",
    "image-classification": "AutoModelForImageClassification",
    "audio-classification": "AutoModelForAudioClassification",
    "automatic-speech-recognition": "AutoModelForSpeechSeq2Seq",
}

# families whose absolute positions start after the padding index (positions = pad + 1 + i)
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text",
                     "xlm-roberta-xl", "roberta-prelayernorm", "ibert", "mpnet", "esm"}
_SAMPLE_TEXT = ["Ember compiles models to native code.", "The quick brown fox jumps over the lazy dog.",
                "A server answers many requests at once."]


# ---------------------------------------------------------------- loading

def load_hf(path, task: str | None = None):
    """(model, tokenizer or None) from a local directory, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; tasks are {', '.join(str(t) for t in TASKS if t)}")
    if not os.path.isdir(path):
        raise InputError(f"{path!r} is not a directory holding a HuggingFace model "
                         f"(config.json + weights); Ember never downloads models")
    auto = getattr(transformers, TASKS[task])
    try:
        model = auto.from_pretrained(str(path))
    except Exception as e:
        raise EmberError(f"cannot load a {TASKS[task]} from {path}: {type(e).__name__}: {e}") from e
    tokenizer = None
    if any(os.path.exists(os.path.join(path, f)) for f in
           ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "vocab.json")):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
        except Exception:  # a model without a usable tokenizer still compiles (random ids)
            tokenizer = None
    return model, tokenizer


# ---------------------------------------------------------------- families and inputs

def _params(model) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _kind(model) -> str:
    """text | seq2seq | image | audio | features: what the model's inputs look like."""
    main = getattr(model, "main_input_name", "input_ids")
    cfg = model.config
    if main == "pixel_values":
        return "image"
    if main == "input_values":
        return "audio"
    if main == "input_features":
        return "features"
    if getattr(cfg, "is_encoder_decoder", False) and "decoder_input_ids" in _params(model):
        return "seq2seq"
    return "text"


def _get(cfg, *names, default=None):
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default


def _text_cfg(cfg):
    return getattr(cfg, "text_config", None) or cfg


def max_seq_len(model) -> int | None:
    """The longest sequence an absolute position table allows (None: no table, e.g. RoPE)."""
    cfg = _text_cfg(model.config)
    if _get(cfg, "position_embedding_type", default="absolute") != "absolute":
        return None
    if getattr(cfg, "rope_theta", None) is not None or getattr(cfg, "rope_parameters", None) \
            or getattr(cfg, "rotary_emb_base", None) is not None or cfg.model_type in (
                "t5", "mt5", "umt5", "bloom", "falcon", "llama", "deberta-v2", "deberta"):
        return None  # relative / rotary / alibi positions: no table to run off
    n = _get(cfg, "max_position_embeddings", "n_positions", "n_ctx", "max_target_positions")
    if n is None:
        return None
    if cfg.model_type in _OFFSET_POSITIONS:
        n -= (_get(cfg, "pad_token_id", default=1) + 1)
    if cfg.model_type in ("opt",):
        n -= 2  # OPT's learned positions are offset by 2
    return int(n)


def _image_size(cfg) -> tuple[int, int]:
    s = _get(cfg, "image_size", default=224)
    return (s, s) if isinstance(s, int) else tuple(s)[-2:]


def _is_patch_model(model) -> bool:
    """Vision transformers fix the image size (a position table per patch); CNNs do not."""
    return any("position" in n for n, _ in model.named_parameters())


def example_inputs(model, tokenizer=None, batch: int = 2, seq: int = 8, image_size=None,
                   decoder_seq: int | None = None, seed: int = 0) -> dict:
    """Example keyword inputs for ``model``: from the tokenizer when given, else from the config.

    Text: input_ids (+ attention_mask, token_type_ids when forward takes them; the last row
    right-padded so masks are exercised), seq2seq adds decoder_input_ids, vision
    pixel_values [batch, channels, H, W], speech input_values / input_features.
    """
    import torch
    g = torch.Generator().manual_seed(seed)
    cfg, params, kind = model.config, _params(model), _kind(model)
    out: dict[str, Any] = {}
    if kind in ("text", "seq2seq"):
        tcfg = _text_cfg(cfg)
        vocab = _get(tcfg, "vocab_size", default=1000)
        if tokenizer is not None:
            sents = [_SAMPLE_TEXT[i % len(_SAMPLE_TEXT)] for i in range(batch)]
            enc = tokenizer(sents, padding="max_length", truncation=True, max_length=seq,
                            return_tensors="pt")
            out["input_ids"] = enc["input_ids"].to(torch.int64)
            mask = enc.get("attention_mask")
            mask = torch.ones(batch, seq, dtype=torch.int64) if mask is None else mask.to(torch.int64)
            tt = enc.get("token_type_ids")
        else:
            special = {_get(tcfg, n) for n in ("pad_token_id", "bos_token_id", "eos_token_id")} - {None}
            lo = min(max(special, default=-1) + 1, vocab - 1) if max(special, default=-1) < vocab // 2 else 0
            out["input_ids"] = torch.randint(lo, vocab, (batch, seq), generator=g)
            mask = torch.ones(batch, seq, dtype=torch.int64)
            if batch > 1 and seq > 2:
                mask[-1, seq - seq // 3:] = 0
            tt = None
        if "attention_mask" in params:
            out["attention_mask"] = mask
        if "token_type_ids" in params and _get(tcfg, "type_vocab_size", default=0) > 1:
            out["token_type_ids"] = (tt.to(torch.int64) if tt is not None
                                     else torch.zeros(batch, seq, dtype=torch.int64))
        if kind == "seq2seq":
            n = decoder_seq or max(2, seq - 3)
            out["decoder_input_ids"] = torch.randint(0, vocab, (batch, n), generator=g)
    elif kind == "image":
        h, w = (image_size, image_size) if isinstance(image_size, int) else \
            (tuple(image_size) if image_size else _image_size(cfg))
        c = _get(cfg, "num_channels", default=3)
        out["pixel_values"] = torch.randn(batch, c, h, w, generator=g)
    elif kind == "audio":  # raw 16 kHz waveform; ``seq`` counts 10 ms frames
        out["input_values"] = torch.randn(batch, 160 * seq, generator=g)
        if "attention_mask" in params and getattr(cfg, "feat_extract_norm", "") == "layer":
            out["attention_mask"] = torch.ones(batch, seq, dtype=torch.int64)
    else:  # input_features: log-mel frames; Whisper wants exactly 2 * max_source_positions
        mel = _get(cfg, "num_mel_bins", "feature_size", default=80)
        frames = 2 * cfg.max_source_positions if getattr(cfg, "max_source_positions", None) else seq
        out["input_features"] = torch.randn(batch, mel, frames, generator=g)
        if getattr(cfg, "is_encoder_decoder", False) and "decoder_input_ids" in params:
            vocab = _get(cfg, "vocab_size", default=1000)
            out["decoder_input_ids"] = torch.randint(0, vocab, (batch, decoder_seq or 4), generator=g)
    return out


def dynamic_axes(model, inputs: dict) -> dict:
    """``dynamic=`` for ember.compile: batch and sequence (or image height/width for CNNs)."""
    kind = _kind(model)
    dyn: dict[str, dict] = {}
    for name in inputs:
        if name in ("input_ids", "attention_mask", "token_type_ids", "position_ids"):
            dyn[name] = {0: "batch", 1: "seq"}
        elif name in ("decoder_input_ids", "decoder_attention_mask"):
            dyn[name] = {0: "batch", 1: "decoder_seq"}
        elif name == "pixel_values":
            dyn[name] = {0: "batch"} if _is_patch_model(model) else {0: "batch", 2: "height", 3: "width"}
        elif name in ("input_values",):
            # the waveform length stays fixed: torch.export cannot yet prove the conv feature
            # encoder's length guards for a free length (it asks for multiples of the stride)
            dyn[name] = {0: "batch"}
        elif name == "input_features":
            dyn[name] = {0: "batch"}
        else:
            dyn[name] = {0: "batch"}
    return dyn


# ---------------------------------------------------------------- the compiled model

_DEFAULTS = {"attention_mask": ("input_ids", 1), "token_type_ids": ("input_ids", 0),
             "decoder_attention_mask": ("decoder_input_ids", 1)}


class HFCompiledModel:
    """A compiled HF model; call it like the model (keywords or positionally in input order).

    Returns the model's own output class (``BaseModelOutput``, ``CausalLMOutput``...) with
    torch tensors. ``attention_mask`` / ``token_type_ids`` default to ones / zeros as in HF.
    """

    def __init__(self, compiled, model, tokenizer, inputs: dict, dynamic: dict | None):
        self.compiled, self.tokenizer = compiled, tokenizer
        self.config = model.config
        self.model_class = type(model).__name__
        self.example_inputs, self.dynamic = inputs, dynamic
        self.input_names = list(getattr(compiled, "input_names", inputs))
        self._dtypes = {k: v.dtype for k, v in inputs.items()}

    @property
    def graph(self):
        return getattr(self.compiled, "graph", None)

    def _feeds(self, args, kwargs) -> dict:
        import torch
        if len(args) > len(self.input_names):
            raise InputError(f"{self.model_class} takes inputs {', '.join(self.input_names)}; "
                             f"got {len(args)} positional")
        vals = dict(zip(self.input_names, args))
        for k, v in kwargs.items():
            if v is None or k in ("return_dict", "use_cache", "output_attentions",
                                  "output_hidden_states") and not isinstance(v, torch.Tensor):
                continue
            if k not in self.input_names:
                raise InputError(f"{self.model_class} was compiled with inputs "
                                 f"{', '.join(self.input_names)}; got unknown input {k!r}")
            vals[k] = v
        for k in self.input_names:
            if k in vals:
                t = vals[k]
                t = torch.from_numpy(np.asarray(t)) if not isinstance(t, torch.Tensor) else t
                want = self._dtypes.get(k)
                if want is not None and t.dtype != want and not t.dtype.is_floating_point \
                        and not (want.is_floating_point):
                    t = t.to(want)  # int32 / bool masks from other pipelines
                vals[k] = t
            elif k in _DEFAULTS and _DEFAULTS[k][0] in vals:
                src, fill = _DEFAULTS[k]
                vals[k] = torch.full_like(vals[src], fill, dtype=self._dtypes.get(k, torch.int64))
            else:
                raise InputError(f"{self.model_class}: missing input {k!r} "
                                 f"(inputs: {', '.join(self.input_names)})")
        return vals

    def __call__(self, *args, **kwargs):
        vals = self._feeds(args, kwargs)
        return self.compiled(**vals)

    def encode(self, texts, **tok_kwargs):
        """Tokenize ``texts`` with the model's tokenizer and run; needs a tokenizer."""
        if self.tokenizer is None:
            raise InputError("this model has no tokenizer; pass token ids instead")
        enc = self.tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, **tok_kwargs)
        return self(**{k: v for k, v in enc.items() if k in self.input_names})

    def save(self, path) -> None:
        self.compiled.save(path)

    def __repr__(self):
        return f"<ember.hf.HFCompiledModel {self.model_class} inputs={self.input_names}>"


def _prepare(model):
    model.eval()
    cfg = model.config
    for c in (cfg, getattr(cfg, "text_config", None), getattr(cfg, "decoder", None)):
        if c is not None and hasattr(c, "use_cache"):
            c.use_cache = False
    cfg.return_dict = True
    for flag in ("output_attentions", "output_hidden_states"):
        if getattr(cfg, flag, False) is None:
            setattr(cfg, flag, False)
    return model


def _wrapped(model, names: list[str]):
    """A module whose forward takes exactly ``names`` and calls ``model`` with use_cache=False."""
    import torch
    params = _params(model)
    fixed = {k: False for k in ("use_cache",) if k in params}
    if "return_dict" in params:
        fixed["return_dict"] = True
    if not fixed:
        return model
    ns: dict = {}
    src = (f"def forward(self, {', '.join(names)}):\n"
           f"    return self.model({', '.join(f'{n}={n}' for n in names)}, **self.fixed)\n")
    exec(src, ns)  # noqa: S102 - a signature torch.export and Ember read input names from
    wrapper = type(type(model).__name__, (torch.nn.Module,), {"forward": ns["forward"]})()
    wrapper.model, wrapper.fixed = model, fixed
    return wrapper


def _import(wrapper, inputs, dyn, from_torch, auto: bool):
    """from_torch; for CNNs with dynamic image sizes, raise the smallest size until torch
    accepts it (strided stages guard that no feature map shrinks to 1x1)."""
    from .errors import ExportError
    lo = 16
    spatial = [(k, a) for k, ax in (dyn or {}).items() for a, d in ax.items()
               if (d if isinstance(d, str) else d[0]) in ("height", "width")]
    if auto and spatial and all(inputs[k].shape[a] >= 33 for k, a in spatial):
        lo = 33  # a stride-32 network (ResNet, ConvNeXt...) needs a 2x2 last feature map
        for k, a in spatial:
            dyn[k][a] = (dyn[k][a], lo, None)
    while True:
        try:
            return from_torch(wrapper, inputs, dyn)
        except ExportError as e:
            spatial = [(k, a) for k, ax in (dyn or {}).items() for a, d in ax.items()
                       if (d if isinstance(d, str) else d[0]) in ("height", "width")]
            if not auto or not spatial or "Constraints violated" not in str(e) or lo > 256:
                raise
            if "specialized it to be a constant" in str(e):
                # the model computes with the image size in Python (TF "same" padding):
                # only the batch stays dynamic
                for k, a in spatial:
                    del dyn[k][a]
                continue
            lo = 2 * lo - 1
            if any(inputs[k].shape[a] < lo for k, a in spatial):
                raise
            for k, a in spatial:
                d = dyn[k][a]
                dyn[k][a] = ((d if isinstance(d, str) else d[0]), lo, None)


def compile_hf(model_or_path, task: str | None = None, dynamic: bool | dict = True, *,
               tokenizer=None, inputs: dict | None = None, batch: int = 2, seq: int = 8,
               image_size=None, opt_level: int = 2, verify: bool | None = None,
               fallback: str | None = None) -> HFCompiledModel:
    """Compile a HuggingFace model (instance or local directory) for this CPU.

    ``dynamic=True`` makes batch and sequence length (CNNs: batch, height, width) dynamic, with
    the range the model allows; ``False`` compiles the example shapes only; a dict is passed to
    ``ember.compile`` as is. Example inputs come from the config (and tokenizer); pass
    ``inputs`` (a dict of example tensors) to choose them. Returns an ``HFCompiledModel`` whose outputs have the
    HF model's own structure.
    """
    import torch

    from . import api
    from .frontends.torch import from_torch

    if isinstance(model_or_path, (str, os.PathLike)):
        model, tok = load_hf(model_or_path, task)
        tokenizer = tokenizer or tok
    elif isinstance(model_or_path, torch.nn.Module):
        model = model_or_path
        if not hasattr(model, "config"):
            raise InputError(f"{type(model).__name__} has no .config: compile_hf takes a HuggingFace "
                             f"PreTrainedModel; use ember.compile for other torch modules")
    else:
        raise InputError(f"compile_hf takes a HuggingFace model or a local directory, "
                         f"got {type(model_or_path).__name__}")
    model = _prepare(model)
    inputs = dict(inputs) if inputs is not None else \
        example_inputs(model, tokenizer, batch=batch, seq=seq, image_size=image_size)
    if dynamic is True:
        dyn = dynamic_axes(model, inputs)
    elif dynamic:
        dyn = dict(dynamic)
    else:
        dyn = None
    wrapper = _wrapped(model, list(inputs))
    try:
        graph = _import(wrapper, inputs, dyn, from_torch, dynamic is True)
    except UnsupportedOpError as e:
        if fallback != "torch":
            raise
        from .fallback import compile_with_fallback
        cm = compile_with_fallback(wrapper, inputs, dyn, e, opt_level=opt_level, verify=verify)
        return HFCompiledModel(cm, model, tokenizer, inputs, dyn)
    n = max_seq_len(model)
    for s in ("seq", "decoder_seq"):
        if n is not None and s in graph.sym_ranges:
            lo, hi = graph.sym_ranges[s]
            graph.sym_ranges[s] = (lo, min(hi, n))
    np_inputs = {k: v.numpy() for k, v in inputs.items()}
    cm = api.compile(graph, np_inputs, opt_level=opt_level, verify=verify)
    return HFCompiledModel(cm, model, tokenizer, inputs, dyn)


# ---------------------------------------------------------------- the zoo

@dataclass
class ZooEntry:
    """A small random-weight model of one family, built from its config class."""
    build: Callable[[], Any]
    family: str                     # encoder | decoder | encoder-decoder | vision-transformer | cnn | speech
    shapes: tuple = ((1, 16), (2, 37))   # (batch, seq) or (batch, image size) pairs tested

    def __call__(self):
        return self.build()


def _t():
    import transformers
    return transformers


_TXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            vocab_size=128, max_position_embeddings=128)
_VIS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
_IMG = ((1, 224), (2, 160))  # CNN: one compile, two batch sizes and image sizes
_VIT = ((1, 32), (2, 32))  # ViT-style: the patch grid is fixed by the position table


def _z(cls, cfg_cls, **kw):
    def build():
        t = _t()
        return getattr(t, cls)(getattr(t, cfg_cls)(**kw))
    return build


ZOO: dict[str, ZooEntry] = {
    # encoders
    "bert": ZooEntry(_z("BertModel", "BertConfig", **_TXT), "encoder"),
    "distilbert": ZooEntry(_z("DistilBertModel", "DistilBertConfig", dim=32, n_layers=2, n_heads=4,
                              hidden_dim=64, vocab_size=128, max_position_embeddings=128), "encoder"),
    "roberta": ZooEntry(_z("RobertaModel", "RobertaConfig", **_TXT), "encoder"),
    "albert": ZooEntry(_z("AlbertModel", "AlbertConfig", embedding_size=16, **_TXT), "encoder"),
    "electra": ZooEntry(_z("ElectraModel", "ElectraConfig", embedding_size=16, **_TXT), "encoder"),
    "deberta_v2": ZooEntry(_z("DebertaV2Model", "DebertaV2Config", **_TXT), "encoder"),
    "bert_classifier": ZooEntry(_z("BertForSequenceClassification", "BertConfig", num_labels=3, **_TXT),
                                "encoder"),
    # decoder-only LLMs
    "gpt2": ZooEntry(_z("GPT2Model", "GPT2Config", n_layer=2, n_embd=32, n_head=4, vocab_size=128,
                        n_positions=128, bos_token_id=0, eos_token_id=0), "decoder"),
    "llama": ZooEntry(_z("LlamaModel", "LlamaConfig", num_key_value_heads=2, **_TXT), "decoder"),
    "llama_lm": ZooEntry(_z("LlamaForCausalLM", "LlamaConfig", num_key_value_heads=2, **_TXT), "decoder"),
    "mistral": ZooEntry(_z("MistralModel", "MistralConfig", num_key_value_heads=2, **_TXT), "decoder"),
    "qwen2": ZooEntry(_z("Qwen2Model", "Qwen2Config", num_key_value_heads=2, **_TXT), "decoder"),
    "qwen3": ZooEntry(_z("Qwen3Model", "Qwen3Config", num_key_value_heads=2, head_dim=8, **_TXT), "decoder"),
    "gemma": ZooEntry(_z("GemmaModel", "GemmaConfig", num_key_value_heads=2, head_dim=8, **_TXT), "decoder"),
    "phi": ZooEntry(_z("PhiModel", "PhiConfig", **_TXT), "decoder"),
    "gpt_neox": ZooEntry(_z("GPTNeoXModel", "GPTNeoXConfig", **_TXT), "decoder"),
    "opt": ZooEntry(_z("OPTModel", "OPTConfig", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       ffn_dim=64, vocab_size=128, max_position_embeddings=128, word_embed_proj_dim=32),
                    "decoder"),
    "falcon": ZooEntry(_z("FalconModel", "FalconConfig", hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=4, vocab_size=128), "decoder"),
    "bloom": ZooEntry(_z("BloomModel", "BloomConfig", hidden_size=32, n_layer=2, n_head=4, vocab_size=128),
                      "decoder"),
    # encoder-decoders
    "t5_encoder": ZooEntry(_z("T5EncoderModel", "T5Config", d_model=32, d_kv=8, d_ff=64, num_layers=2,
                              num_heads=4, vocab_size=128), "encoder"),
    "t5": ZooEntry(_z("T5Model", "T5Config", d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      vocab_size=128), "encoder-decoder"),
    "bart": ZooEntry(_z("BartModel", "BartConfig", d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, vocab_size=128, max_position_embeddings=128), "encoder-decoder"),
    # speech
    "whisper_encoder": ZooEntry(lambda: _t().WhisperModel(_t().WhisperConfig(
        d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=128, num_mel_bins=16, max_source_positions=16,
        max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1)).get_encoder(), "speech", ((1, 0), (2, 0))),
    "wav2vec2": ZooEntry(_z("Wav2Vec2Model", "Wav2Vec2Config", conv_dim=(16, 16), conv_stride=(5, 2),
                            conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                            **_VIS), "speech", ((1, 8), (2, 8))),
    "hubert": ZooEntry(_z("HubertModel", "HubertConfig", conv_dim=(16, 16), conv_stride=(5, 2),
                          conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                          **_VIS), "speech", ((1, 8), (2, 8))),
    # more lineages
    "xlm_roberta": ZooEntry(_z("XLMRobertaModel", "XLMRobertaConfig", **_TXT), "encoder"),
    "modernbert": ZooEntry(_z("ModernBertModel", "ModernBertConfig", pad_token_id=0, bos_token_id=1,
                              eos_token_id=2, cls_token_id=1, sep_token_id=2, **_TXT), "encoder"),
    "phi3": ZooEntry(_z("Phi3Model", "Phi3Config", num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
                        eos_token_id=2, **_TXT), "decoder"),
    "gemma2": ZooEntry(_z("Gemma2Model", "Gemma2Config", num_key_value_heads=2, head_dim=8, **_TXT), "decoder"),
    "stablelm": ZooEntry(_z("StableLmModel", "StableLmConfig", num_key_value_heads=2, **_TXT), "decoder"),
    "marian": ZooEntry(_z("MarianModel", "MarianConfig", d_model=32, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, vocab_size=128, max_position_embeddings=128, pad_token_id=0,
                          decoder_start_token_id=0), "encoder-decoder"),
    # vision
    "dinov2": ZooEntry(_z("Dinov2Model", "Dinov2Config", image_size=32, patch_size=8, **_VIS),
                       "vision-transformer", _VIT),
    "clip_vision": ZooEntry(_z("CLIPVisionModel", "CLIPVisionConfig", image_size=32, patch_size=8, **_VIS),
                            "vision-transformer", _VIT),
    "siglip_vision": ZooEntry(_z("SiglipVisionModel", "SiglipVisionConfig", image_size=32, patch_size=8,
                                 **_VIS), "vision-transformer", _VIT),
    "swin": ZooEntry(_z("SwinModel", "SwinConfig", image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                        num_heads=[2, 2], window_size=4), "vision-transformer", _VIT),
    "beit": ZooEntry(_z("BeitModel", "BeitConfig", image_size=32, patch_size=8,
                        use_relative_position_bias=True, **_VIS), "vision-transformer", _VIT),
    "regnet": ZooEntry(_z("RegNetModel", "RegNetConfig", embedding_size=16, hidden_sizes=[16, 32],
                          depths=[1, 1], groups_width=8), "cnn", _IMG),
    "convnextv2": ZooEntry(_z("ConvNextV2Model", "ConvNextV2Config", hidden_sizes=[16, 32], depths=[1, 1],
                              num_stages=2), "cnn", _IMG),
    "vit":  ZooEntry(_z("ViTModel", "ViTConfig", image_size=32, patch_size=8, **_VIS), "vision-transformer", _VIT),
    "deit": ZooEntry(_z("DeiTModel", "DeiTConfig", image_size=32, patch_size=8, **_VIS),
                     "vision-transformer", _VIT),
    "resnet": ZooEntry(_z("ResNetModel", "ResNetConfig", embedding_size=16, hidden_sizes=[16, 32],
                          depths=[1, 1]), "cnn", _IMG),
    "convnext": ZooEntry(_z("ConvNextModel", "ConvNextConfig", hidden_sizes=[16, 32], depths=[1, 1],
                            num_stages=2), "cnn", _IMG),
    "mobilenet_v2": ZooEntry(_z("MobileNetV2Model", "MobileNetV2Config", depth_multiplier=0.25,
                                tf_padding=False), "cnn", _IMG),
}


def build_zoo_model(name: str, seed: int = 0):
    """The zoo's ``name`` model, eval mode, seeded random weights."""
    import torch
    if name not in ZOO:
        raise InputError(f"no zoo model {name!r}; the zoo has {', '.join(ZOO)}")
    torch.manual_seed(seed)
    return ZOO[name]().eval()
