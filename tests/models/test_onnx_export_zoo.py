"""HuggingFace zoo models exported by ``torch.onnx.export``, compiled by Ember from the ONNX
file, compared with ONNX Runtime on the same file at two shapes from one compile.

The exported files carry dynamic batch / sequence dims (``dynamic_axes`` -> ``dim_param``),
so one Ember build serves both shapes. Models are the small random-weight configs of
``ember.hf.ZOO``; the tolerance is the zoo's 1e-4 relative error.
"""
import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

import ember  # noqa: E402
from ember import hf  # noqa: E402

MODELS = ["distilbert", "gpt2", "llama_lm", "t5_encoder", "vit", "resnet"]


class FirstOutput(torch.nn.Module):
    """The HF model called with positional inputs in ``names`` order; its first output."""

    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args):
        kw = dict(zip(self.names, args))
        if "use_cache" in hf._params(self.model):
            kw["use_cache"] = False
        return self.model(**kw)[0]


def inputs_at(model, batch, size, seed):
    image = hf._kind(model) == "image"
    ex = hf.example_inputs(model, batch=batch, seq=8 if image else size,
                           image_size=size if image else None, seed=seed)
    return {k: v.numpy() for k, v in ex.items()}


@pytest.mark.parametrize("name", MODELS)
def test_exported_zoo_model_matches_onnxruntime(name):
    entry = hf.ZOO[name]
    torch.manual_seed(0)
    model = entry().eval()
    (b0, s0), shapes = entry.shapes[0], entry.shapes
    example = {k: torch.from_numpy(v) for k, v in inputs_at(model, 2, s0, 0).items()}
    names = list(example)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(FirstOutput(model, names), tuple(example.values()), f, input_names=names,
                          output_names=["out"], dynamic_axes=hf.dynamic_axes(model, example),
                          dynamo=False, opset_version=17)
    data = f.getvalue()
    compiled = ember.compile(onnx.load_from_string(data))
    assert any(not isinstance(d, int) for d in compiled.inputs[0].shape)  # dim_param -> symbol
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for batch, size in shapes:
        feeds = inputs_at(model, batch, size, seed=batch)
        want = session.run(None, feeds)[0]
        got = compiled(**feeds)
        assert got.shape == want.shape
        err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-6))
        assert err <= 1e-4, f"{name} at {batch}x{size}: rel err {err:.2e}"
