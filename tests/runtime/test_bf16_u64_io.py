"""bf16 and wide unsigned tensors through every door of the runtime: numpy and torch calls,
the saved artifact (safetensors BF16), and the HTTP protocol's encoding."""
import numpy as np
import pytest

import ember
from ember.ir import Graph, TensorType, dtypes, interpret, sym
from ember.serve.protocol import InferRequest, encode_infer, parse_infer

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)


def scale_graph(dt):
    g = Graph()
    x = g.add_input("x", TensorType(dt, (sym("n"), 4)))
    c = g.add_const(np.array([2, 3, 5, 7], dtype=dt.np), "c")
    g.outputs = [g.op("add", [g.op("mul", [x, c]), c])]
    return g


@pytest.mark.parametrize("dt", [dtypes.bf16, dtypes.u16, dtypes.u32, dtypes.u64])
def test_saved_and_loaded(dt, tmp_path):
    g = scale_graph(dt)
    if dt is dtypes.bf16:
        x = np.linspace(-3, 3, 12).reshape(3, 4).astype(BF16)
    else:  # u64: values above 2**63 (they would be negative as int64)
        x = np.arange(12, dtype=dt.np).reshape(3, 4) + dt.np.type(2**63 if dt is dtypes.u64 else 7)
    want = interpret(g, [x])[0]
    cm = ember.compile(g)
    first = cm(x)
    # integers exact; bf16 within one bf16 step (a fused kernel keeps mul+add in float,
    # the reference rounds to bf16 between them)
    check = np.testing.assert_array_equal if dt is not dtypes.bf16 else \
        (lambda a, b: np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=8e-3))
    check(first, want)
    cm.save(tmp_path / "m.ember")
    loaded = ember.load(tmp_path / "m.ember")
    got = loaded(x)
    assert got.dtype == dt.np
    np.testing.assert_array_equal(got, first)


def test_bf16_torch_tensors():
    torch = pytest.importorskip("torch")
    g = scale_graph(dtypes.bf16)
    cm = ember.compile(g)
    x = torch.linspace(-3, 3, 12).reshape(3, 4).to(torch.bfloat16)
    got = cm(x)
    assert got.dtype == torch.bfloat16
    want = x * torch.tensor([2, 3, 5, 7], dtype=torch.bfloat16) + torch.tensor([2, 3, 5, 7], dtype=torch.bfloat16)
    torch.testing.assert_close(got.float(), want.float(), rtol=8e-3, atol=0)


def test_protocol_carries_bf16_and_u64():
    import json
    y16 = np.array([1.5, -2.25], dtype=BF16)
    y64 = np.array([2**63 + 5], dtype=np.uint64)
    body, _ = encode_infer("m", InferRequest({}), [("a", y16), ("b", y64)])
    out = {o["name"]: o for o in json.loads(body)["outputs"]}
    assert out["a"]["datatype"] == "BF16" and out["a"]["data"] == [1.5, -2.25]
    assert out["b"]["datatype"] == "UINT64" and out["b"]["data"] == [2**63 + 5]
    req = parse_infer(json.dumps({"inputs": [{"name": "x", "datatype": "BF16", "shape": [2],
                                               "data": [1.5, -2.25]}]}).encode())
    assert req.inputs["x"].dtype == BF16 and req.inputs["x"].astype(np.float32).tolist() == [1.5, -2.25]


@pytest.mark.parametrize("n", [1, 3, 64])
def test_bf16_linear_and_matmul_run_on_the_f32_gemm(n):
    rng = np.random.default_rng(n)
    g = Graph()
    x = g.add_input("x", TensorType(dtypes.bf16, (sym("n"), 37)))
    y = g.op("linear", [x, g.add_const(rng.standard_normal((19, 37)).astype(BF16), "w")])
    g.outputs = [g.op("matmul", [y, g.add_const(rng.standard_normal((19, 5)).astype(BF16), "m")])]
    xs = rng.standard_normal((n, 37)).astype(BF16)
    cm = ember.compile(g)
    got, want = cm(xs), interpret(g, [xs])[0]
    assert got.dtype == BF16
    # the reference rounds the middle result to bf16 once more than the fused kernel may
    err = np.abs(got.astype(np.float32) - want.astype(np.float32)).max() / np.abs(want.astype(np.float32)).max()
    assert err < 2e-2
