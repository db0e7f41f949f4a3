"""ONNX importer: models exported by torch.onnx.export against ONNX Runtime, dynamic dims
from dim_param, the compile entry points, and clear errors for malformed files."""
from __future__ import annotations

import io
import subprocess
import sys
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

import ember  # noqa: E402
from ember import errors  # noqa: E402
from ember.frontends.onnx import from_onnx  # noqa: E402
from ember.ir import interpret, verify  # noqa: E402


def _export(model, args, input_names, dynamic_axes=None, output_names=None) -> bytes:
    torch = pytest.importorskip("torch")
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), args, f, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes, dynamo=False,
                          opset_version=17)
    return f.getvalue()


def _ort(data: bytes, feeds: dict):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _mlp_bytes():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.GELU(), torch.nn.Linear(32, 32),
                            torch.nn.Tanh(), torch.nn.Linear(32, 5), torch.nn.Softmax(-1))
    return _export(m, (torch.randn(3, 20),), ["x"], {"x": {0: "batch"}}, ["probs"])


def test_mlp_matches_onnxruntime_with_dynamic_batch(tmp_path):
    data = _mlp_bytes()
    path = tmp_path / "mlp.onnx"
    path.write_bytes(data)
    compiled = ember.compile(str(path))
    assert compiled.output_names == ["probs"]
    for batch in (1, 3, 7):
        x = np.random.default_rng(batch).standard_normal((batch, 20)).astype(np.float32)
        np.testing.assert_allclose(compiled(x), _ort(data, {"x": x})[0], rtol=1e-4, atol=1e-5)


def test_dim_param_is_a_symbol_and_meta_is_kept():
    g = from_onnx(_mlp_bytes())
    verify(g)
    assert str(g.inputs[0].shape[0]) == "batch"
    assert g.sym_ranges["batch"] == (1, 2**31 - 1)
    assert g.meta["onnx_input_names"] == {"x": "x"}
    assert g.output_names == ["probs"]
    assert g.stats().get("linear") == 3  # Gemm(transB=1) imports as one linear op


def test_cnn_matches_onnxruntime():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    nn = torch.nn
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(8, 16, 3, stride=2, groups=2), nn.ReLU(), nn.AvgPool2d(2, ceil_mode=True),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    m.eval()
    with torch.no_grad():  # non-trivial running statistics
        m[1].running_mean.uniform_(-1, 1)
        m[1].running_var.uniform_(0.5, 2)
    data = _export(m, (torch.randn(2, 3, 20, 20),), ["image"], {"image": {0: "n"}})
    compiled = ember.compile(onnx.load_from_string(data))
    x = np.random.default_rng(0).standard_normal((4, 3, 20, 20)).astype(np.float32)
    np.testing.assert_allclose(compiled(x), _ort(data, {"image": x})[0], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_small_bert_matches_onnxruntime():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask):
            return self.m(input_ids=ids, attention_mask=mask).last_hidden_state

    ids = torch.randint(0, 100, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.int64)
    data = _export(Wrap(model), (ids, mask), ["ids", "mask"],
                   {"ids": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"}}, ["hidden"])
    g = from_onnx(data)
    assert [str(d) for d in g.inputs[0].shape] == ["batch", "seq"]
    compiled = ember.compile(data and onnx.load_from_string(data))
    rng = np.random.default_rng(0)
    for b, s in ((2, 8), (3, 5)):
        feeds = {"ids": rng.integers(0, 100, (b, s)).astype(np.int64),
                 "mask": np.ones((b, s), np.int64)}
        feeds["mask"][0, -2:] = 0
        np.testing.assert_allclose(compiled(**feeds), _ort(data, feeds)[0], rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------- hand-built graphs

def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, shape, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


def test_initializer_listed_as_input_is_a_constant_and_names_are_sanitized():
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [1, 2, 3, 4])
    m = _model([helper.make_node("Add", ["input.1", "w"], ["out:0"])],
               [_vi("input.1", ["n", 4]), _vi("w", [4])], [_vi("out:0", ["n", 4])], [w])
    g = from_onnx(m)
    assert [v.name for v in g.inputs] == ["input_1"]
    assert g.meta["onnx_input_names"] == {"input_1": "input.1"}
    assert g.output_names == ["out:0"]
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(interpret(g, [x])[0], x + [1, 2, 3, 4])
    np.testing.assert_allclose(ember.compile(m)(x), x + [1, 2, 3, 4])


def test_shape_arithmetic_on_symbolic_dims():
    # Reshape(x, Concat(Shape(x)[0], -1)): the exporters' flatten
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
             helper.make_node("Unsqueeze", ["b", "zero_axes"], ["b1"]),
             helper.make_node("Concat", ["b1", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    inits = [helper.make_tensor("zero", TensorProto.INT64, [], [0]),
             helper.make_tensor("zero_axes", TensorProto.INT64, [1], [0]),
             helper.make_tensor("minus1", TensorProto.INT64, [1], [-1])]
    m = _model(nodes, [_vi("x", ["batch", 3, 4])], [_vi("y", ["batch", 12])], inits)
    g = from_onnx(m)
    assert [str(d) for d in g.outputs[0].shape] == ["batch", "12"]
    x = np.arange(2 * 12, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(ember.compile(m)(x), x.reshape(2, 12))


def test_unknown_dims_get_fresh_symbols():
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [None, 3])], [_vi("y", [None, 3])])
    g = from_onnx(m)
    assert isinstance(g.inputs[0].shape[0], ember.ir.symbolic.SymExpr)


def test_cli_compiles_an_onnx_file(tmp_path):
    path = tmp_path / "mlp.onnx"
    path.write_bytes(_mlp_bytes())
    out = tmp_path / "mlp.ember"
    proc = subprocess.run([sys.executable, "-m", "ember.cli", "compile", str(path), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.exists()


# ---------------------------------------------------------------- errors

def test_all_unsupported_ops_are_listed_at_once():
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("FooBar", ["a"], ["b"], name="first"),
             helper.make_node("NonZero", ["x"], ["c"], name="second"),
             helper.make_node("Zap", ["b"], ["d"], name="third", domain="com.example"),
             helper.make_node("Add", ["c", "d"], ["y"])]
    m = _model(nodes, [_vi("x", [2, 2])], [_vi("y", [2, 2])])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(errors.UnsupportedOpError) as ei:
        from_onnx(m)
    got = {(u["op"], u["node"]) for u in ei.value.unsupported}
    assert got == {("onnx::FooBar", "first"), ("onnx::NonZero", "second"), ("com.example::Zap", "third")}
    assert all(set(u) == {"op", "node", "source"} for u in ei.value.unsupported)
    assert "FooBar" in str(ei.value) and "NonZero" in str(ei.value)


def _good_bytes():
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel())
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_vi("x", ["n", 4])],
                  [_vi("y", ["n", 4])], [w]).SerializeToString()


@pytest.mark.parametrize("cut", [1, 7, 20, 40, -30, -9, -1])
def test_truncated_files_raise_ember_errors(tmp_path, cut):
    data = _good_bytes()
    path = tmp_path / "bad.onnx"
    path.write_bytes(data[:cut])
    try:
        g = from_onnx(str(path))
    except errors.EmberError:
        return
    verify(g)  # a cut that still parses must give a sound graph


def test_garbage_and_missing_files():
    with pytest.raises(errors.OnnxError, match="not a valid ONNX|no ONNX graph"):
        from_onnx(b"\xff\xfe definitely not protobuf \x00\x01")
    with pytest.raises(errors.OnnxError, match="does not exist"):
        from_onnx("/nonexistent/model.onnx")
    with pytest.raises(errors.EmberError):
        ember.compile("/nonexistent/model.onnx")


def test_missing_initializer():
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_vi("x", [2, 4])], [_vi("y", [2, 4])])
    with pytest.raises(errors.OnnxError, match="'w'.*missing initializer"):
        from_onnx(m)


def test_cycle():
    nodes = [helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])]
    m = _model(nodes, [_vi("x", [2])], [_vi("b", [2])])
    with pytest.raises(errors.OnnxError, match="cycle"):
        from_onnx(m)


def test_wrong_types():
    # Add of float and int64: ONNX requires one type; Ember says which node
    m = _model([helper.make_node("Add", ["x", "i"], ["y"], name="bad_add")],
               [_vi("x", [2]), _vi("i", [2], TensorProto.INT64)], [_vi("y", [2])])
    with pytest.raises(errors.EmberError, match="bad_add"):
        from_onnx(m)
    # a MatMul whose shapes cannot agree
    m = _model([helper.make_node("MatMul", ["x", "z"], ["y"])],
               [_vi("x", [2, 3]), _vi("z", [4, 5])], [_vi("y", [2, 5])])
    with pytest.raises(errors.ShapeError):
        from_onnx(m)
    # a string input
    m = _model([helper.make_node("Identity", ["s"], ["y"])], [_vi("s", [2], TensorProto.STRING)],
               [_vi("y", [2], TensorProto.STRING)])
    with pytest.raises(errors.UnsupportedOpError, match="STRING"):
        from_onnx(m)


def test_duplicate_outputs_and_bad_attributes():
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["y"])]
    with pytest.raises(errors.OnnxError, match="produced twice"):
        from_onnx(_model(nodes, [_vi("x", [2])], [_vi("y", [2])]))
    bad = helper.make_node("Transpose", ["x"], ["y"], perm=[0, 5])
    with pytest.raises(errors.EmberError):
        from_onnx(_model([bad], [_vi("x", [2, 3])], [_vi("y", [3, 2])]))
