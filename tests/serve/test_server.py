"""A real server on a loopback port: KServe v2 routes, results, 400/413s, batching, metrics."""
import json
import threading

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import ember  # noqa: E402
from ember.serve import BatchConfig, ServeConfig, create_app  # noqa: E402
from serve_helpers import ThreadServer, infer_body, mlp_graph, output_of, request  # noqa: E402


@pytest.fixture(scope="module")
def models():
    return {"mlp": ember.compile(mlp_graph(0, out=4)), "other": ember.compile(mlp_graph(1, out=3))}


@pytest.fixture(scope="module")
def server(models):
    config = ServeConfig(batch=BatchConfig(max_batch_size=32, max_delay_ms=20, max_queue=64),
                         max_request_bytes=256 * 1024)
    with ThreadServer(create_app(models, config)) as s:
        s.app_state = s.server.config.app.state
        yield s


def x_of(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)


def post(server, model, body, headers=None):
    return request(server.port, "POST", f"/v2/models/{model}/infer", body, headers)


def test_health_and_metadata(server):
    assert request(server.port, "GET", "/v2/health/live")[0] == 200
    assert request(server.port, "GET", "/v2/health/ready")[0] == 200
    status, _, body = request(server.port, "GET", "/v2")
    assert status == 200 and "binary_tensor_data" in json.loads(body)["extensions"]
    status, _, body = request(server.port, "GET", "/v2/models/mlp")
    assert status == 200
    assert json.loads(body) == {
        "name": "mlp", "versions": ["1"], "platform": "ember_cpu",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]}
    assert request(server.port, "GET", "/v2/models/other/ready")[0] == 200
    assert request(server.port, "GET", "/v2/models/other/versions/1/ready")[0] == 200
    for path in ("/v2/models/nope", "/v2/models/nope/ready"):
        status, _, body = request(server.port, "GET", path)
        assert status == 400 and "unknown model 'nope'" in json.loads(body)["error"]


def test_json_infer_matches_the_model_for_each_model(server, models):
    for name, n in (("mlp", 3), ("other", 1)):
        x = x_of(n, seed=n)
        status, headers, body = post(server, name, infer_body(x, id="req-7"))
        assert status == 200, body
        assert headers["content-type"] == "application/json"
        assert json.loads(body)["id"] == "req-7" and json.loads(body)["model_name"] == name
        np.testing.assert_allclose(output_of(body), models[name](x), rtol=1e-6, atol=1e-6)
    # nested data is accepted too, and the versioned route answers the same
    x = x_of(2)
    body = {"inputs": [{"name": "x", "shape": [2, 8], "datatype": "FP32", "data": x.tolist()}]}
    status, _, out = request(server.port, "POST", "/v2/models/mlp/versions/1/infer", body)
    assert status == 200
    np.testing.assert_allclose(output_of(out), models["mlp"](x), rtol=1e-6, atol=1e-6)


def test_binary_data_extension(server, models):
    x = x_of(5, seed=3)
    head = json.dumps({"inputs": [{"name": "x", "shape": [5, 8], "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    status, headers, body = post(server, "mlp", head + x.tobytes(),
                                 {"Inference-Header-Content-Length": str(len(head)),
                                  "Content-Type": "application/octet-stream"})
    assert status == 200, body
    n = int(headers["inference-header-content-length"])
    meta = json.loads(body[:n])["outputs"][0]
    assert meta["parameters"]["binary_data_size"] == 5 * 4 * 4
    y = np.frombuffer(body[n:], dtype="<f4").reshape(meta["shape"])
    np.testing.assert_allclose(y, models["mlp"](x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("body,status,message", [
    (b"{not json", 400, "not valid JSON"),
    ({"input": []}, 400, '"inputs" list'),
    (infer_body(np.zeros((2, 5), np.float32)), 400, "input 'x': dim 1 must be 8, got 5"),
    (infer_body(np.zeros((2, 8, 1), np.float32)), 400, "input 'x': expected rank 2"),
    (infer_body(np.zeros((2, 8), np.int64), datatype="INT64"), 400,
     "input 'x': expected datatype FP32, got INT64"),
    (infer_body(np.zeros((2, 8), np.float32), name="z"), 400, "no input 'z'"),
    ({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [1.0] * 7}]}, 400,
     "input 'x': shape [1, 8] needs 8 elements, data has 7"),
    ({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": ["a"] * 8}]}, 400,
     "input 'x': data holds str"),
    ({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "BYTES", "data": ["a"] * 8}]}, 400,
     "input 'x': unsupported datatype 'BYTES'"),
    ({"inputs": [{"name": "x", "shape": [1, -8], "datatype": "FP32", "data": []}]}, 400,
     "input 'x': shape must be a list of non-negative integers"),
    ({"inputs": []}, 400, "missing input 'x'"),
    (infer_body(np.zeros((65, 8), np.float32)), 400, "outside the compiled range"),
    (infer_body(np.zeros((1, 8), np.float32), outputs=[{"name": "q"}]), 400, "no output 'q'"),
    (infer_body(np.zeros((9000, 8), np.float32)), 413, "over the limit"),
])
def test_bad_requests_get_clear_errors(server, body, status, message):
    got, _, out = post(server, "mlp", body)
    assert got == status, out
    assert message in json.loads(out)["error"]


def test_unknown_model_infer_is_400(server):
    status, _, body = post(server, "resnet", infer_body(x_of(1)))
    assert status == 400 and "unknown model 'resnet'" in json.loads(body)["error"]


def test_concurrent_requests_are_batched(server, models):
    batcher = server.app_state.models["mlp"].batcher
    calls_before = batcher.calls
    xs = [x_of(1 + k % 3, seed=100 + k) for k in range(16)]
    results = [None] * len(xs)

    def client(k):
        results[k] = post(server, "mlp", infer_body(xs[k]))
    threads = [threading.Thread(target=client, args=(k,)) for k in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x, (status, _, body) in zip(xs, results):
        assert status == 200, body
        np.testing.assert_allclose(output_of(body), models["mlp"](x), rtol=1e-6, atol=1e-6)
    assert batcher.calls - calls_before < len(xs)  # several requests shared a call


def test_metrics(server):
    post(server, "mlp", infer_body(x_of(1)))
    status, headers, body = request(server.port, "GET", "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'ember_requests_total{code="200",model="mlp"}' in text
    assert 'ember_request_latency_seconds_bucket{le="0.5",model="mlp"}' in text
    assert "ember_batch_requests_bucket" in text and 'ember_queue_depth{model="mlp"}' in text
