"""The Ray Serve recipe of docs/serving.md: a local deployment of an Ember artifact, called
over HTTP with the v2 protocol."""
import json
import os
import threading

import numpy as np
import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

import ember  # noqa: E402
from ember.serve.ray_serve import ember_app  # noqa: E402
from serve_helpers import free_port, infer_body, mlp_graph, output_of, request  # noqa: E402


@pytest.mark.slow
def test_ray_serve_deployment(tmp_path):
    compiled = ember.compile(mlp_graph(0))
    compiled.save(tmp_path / "mlp.ember")
    port = free_port()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False, namespace="ember-test")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(ember_app(str(tmp_path / "mlp.ember"), num_cpus=0.5, batch_wait_timeout_s=0.05),
                  name="ember-mlp", route_prefix="/", blocking=False)
        status, _, body = request(port, "GET", "/v2/models/mlp")
        assert status == 200 and json.loads(body)["inputs"][0]["shape"] == [-1, 8]
        xs = [np.random.default_rng(k).standard_normal((1 + k % 2, 8)).astype(np.float32)
              for k in range(6)]
        results = [None] * len(xs)

        def client(k):
            results[k] = request(port, "POST", "/v2/models/mlp/infer", infer_body(xs[k]))
        threads = [threading.Thread(target=client, args=(k,)) for k in range(len(xs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for x, (status, _, body) in zip(xs, results):
            assert status == 200, body
            np.testing.assert_allclose(output_of(body), compiled(x), rtol=1e-6, atol=1e-6)
        status, _, body = request(port, "POST", "/v2/models/mlp/infer",
                                  infer_body(np.zeros((1, 3), np.float32)))
        assert status == 400 and "input 'x'" in json.loads(body)["error"]
        status, _, body = request(port, "POST", "/v2/models/bert/infer", infer_body(xs[0]))
        assert status == 400 and "unknown model 'bert'" in json.loads(body)["error"]
    finally:
        serve.shutdown()
        ray.shutdown()
