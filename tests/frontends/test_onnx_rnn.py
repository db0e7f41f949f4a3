"""ONNX RNN / GRU / LSTM against ONNX Runtime, for what the ONNX node suite leaves out (its
reference ignores sequence_lens, activations and clip): variable sequence lengths in every
direction, non-default activations with alpha/beta, clip, input_forget,
linear_before_reset, layout 1 with initial states, and all three outputs."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import ember  # noqa: E402

T, BATCH, IN, H = 5, 3, 4, 6
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def _model(kind, attrs, *, seq_lens=True, initial=True, peepholes=False, layout=0):
    rng = np.random.default_rng(0)
    dirs = 2 if attrs.get("direction") == "bidirectional" else 1
    G = GATES[kind]
    weights = {"W": (dirs, G * H, IN), "R": (dirs, G * H, H), "B": (dirs, 2 * G * H)}
    if peepholes:
        weights["P"] = (dirs, 3 * H)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.5).astype(np.float32), n)
             for n, s in weights.items()]
    x_shape = (T, BATCH, IN) if layout == 0 else (BATCH, T, IN)
    s_shape = (dirs, BATCH, H) if layout == 0 else (BATCH, dirs, H)
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    names = ["X", "W", "R", "B", "", ""]
    if seq_lens:
        inputs.append(helper.make_tensor_value_info("seq", TensorProto.INT32, (BATCH,)))
        names[4] = "seq"
    if initial:
        inputs.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, s_shape))
        names[5] = "h0"
        if kind == "LSTM":
            inputs.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, s_shape))
            names.append("c0")
    if peepholes:
        names += [""] * (7 - len(names)) + ["P"]
    while names and names[-1] == "":
        names.pop()
    outs = ["Y", "Y_h"] + (["Y_c"] if kind == "LSTM" else [])
    node = helper.make_node(kind, names, outs, hidden_size=H, layout=layout, **attrs)
    y_shape = (T, dirs, BATCH, H) if layout == 0 else (BATCH, T, dirs, H)
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, y_shape)] + [
        helper.make_tensor_value_info(o, TensorProto.FLOAT, s_shape) for o in outs[1:]]
    g = helper.make_graph([node], "rnn", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])


def _feeds(model, lens):
    rng = np.random.default_rng(1)
    out = {}
    for vi in model.graph.input:
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if vi.name == "seq":
            out[vi.name] = np.array(lens, np.int32)
        else:
            out[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def _check(model, lens=(T, 2, 4), atol=1e-5):
    feeds = _feeds(model, lens)
    data = model.SerializeToString()
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    compiled = ember.compile(model)
    got = compiled(*[feeds[vi.name] for vi in model.graph.input])
    for name, g, w in zip(["Y", "Y_h", "Y_c"], got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=atol, err_msg=name)


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_sequence_lens_and_initial_states(kind, direction):
    _check(_model(kind, {"direction": direction}))


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_layout_1_with_initial_states(kind):
    # ONNX Runtime has no layout 1: compare with its layout-0 run on transposed tensors
    m0 = _model(kind, {"direction": "bidirectional"}, layout=0)
    m1 = _model(kind, {"direction": "bidirectional"}, layout=1)
    feeds = _feeds(m0, (T, 2, 4))
    want = ort.InferenceSession(m0.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    swap = {k: (v.transpose(1, 0, 2) if k in ("X", "h0", "c0") else v) for k, v in feeds.items()}
    got = ember.compile(m1)(*[swap[vi.name] for vi in m1.graph.input])
    np.testing.assert_allclose(got[0], want[0].transpose(2, 0, 1, 3), rtol=1e-4, atol=1e-5)
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_allclose(g, w.transpose(1, 0, 2), rtol=1e-4, atol=1e-5)


def test_gru_linear_before_reset():
    _check(_model("GRU", {"linear_before_reset": 1, "direction": "bidirectional"}))


def test_lstm_peepholes_input_forget_and_clip():
    _check(_model("LSTM", {"input_forget": 1, "clip": 0.7}, peepholes=True))


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_clip(kind):
    _check(_model(kind, {"clip": 0.5, "direction": "bidirectional"}))


@pytest.mark.parametrize("kind,acts,alpha,beta", [
    ("RNN", ["Relu"], [], []),
    ("RNN", ["Affine", "ScaledTanh"], [0.5, 0.8], [0.1, 1.2]),   # one per direction
    ("GRU", ["HardSigmoid", "LeakyRelu"], [0.3, 0.05], [0.4]),
    ("LSTM", ["Sigmoid", "Softsign", "Elu"], [1.5], []),
])
def test_activations_with_alpha_and_beta(kind, acts, alpha, beta):
    attrs = {"activations": acts}
    if len(acts) == 2 and kind == "RNN":
        attrs["direction"] = "bidirectional"
    if alpha:
        attrs["activation_alpha"] = alpha
    if beta:
        attrs["activation_beta"] = beta
    _check(_model(kind, attrs, seq_lens=False))


def test_dynamic_sequence_length_is_reported():
    # the unrolled length must be static; a symbolic one is reported, not miscompiled
    m = _model("RNN", {}, seq_lens=False, initial=False)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "seq"
    with pytest.raises(ember.errors.UnsupportedOpError, match="dynamic sequence length"):
        ember.compile(m)


def test_dynamic_batch_with_sequence_lens():
    # one compiled model serves every batch size: states, masks and zeros have a symbolic batch
    m = _model("LSTM", {"direction": "bidirectional"})
    for vi in list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        dims[{"X": 1, "seq": 0, "Y": 2}.get(vi.name, 1)].dim_param = "batch"
    compiled = ember.compile(m)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    for b in (1, 5):
        rng = np.random.default_rng(b)
        feeds = {"X": rng.standard_normal((T, b, IN)).astype(np.float32),
                 "seq": rng.integers(1, T + 1, b).astype(np.int32),
                 "h0": rng.standard_normal((2, b, H)).astype(np.float32),
                 "c0": rng.standard_normal((2, b, H)).astype(np.float32)}
        got = compiled(*[feeds[vi.name] for vi in m.graph.input])
        for g, w in zip(got, sess.run(None, feeds)):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
