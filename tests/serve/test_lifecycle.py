"""Overload and shutdown: 503 when a queue is full; no request lost when the server stops,
in-process and as `ember serve` receiving SIGTERM."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import ember  # noqa: E402
from ember.serve import BatchConfig, ServeConfig, create_app  # noqa: E402
from serve_helpers import (ThreadServer, free_port, infer_body, mlp_graph, output_of,  # noqa: E402
                           request, wait_ready)

REPO = Path(__file__).resolve().parents[2]


class Slow:
    """A model that takes ``delay`` seconds per call (to fill queues on purpose)."""

    def __init__(self, model, delay):
        self.model, self.delay = model, delay
        self.inputs, self.outputs, self.native = model.inputs, model.outputs, model.native

    def run_numpy(self, arrays):
        time.sleep(self.delay)
        return self.model.run_numpy(arrays)


@pytest.fixture(scope="module")
def mlp():
    return ember.compile(mlp_graph(0))


def fire(port, model, xs):
    """Send one request per array at once; returns [(status, body)] in order."""
    results = [None] * len(xs)

    def client(k):
        s, _, b = request(port, "POST", f"/v2/models/{model}/infer", infer_body(xs[k]))
        results[k] = (s, b)
    threads = [threading.Thread(target=client, args=(k,)) for k in range(len(xs))]
    for t in threads:
        t.start()
    return threads, results


def test_full_queue_answers_503(mlp):
    config = ServeConfig(batch=BatchConfig(max_batch_size=1, max_delay_ms=0, max_queue=2))
    xs = [np.full((1, 8), k, np.float32) for k in range(10)]
    with ThreadServer(create_app({"slow": Slow(mlp, 0.3)}, config)) as s:
        threads, results = fire(s.port, "slow", xs)
        for t in threads:
            t.join()
        codes = [r[0] for r in results]
        assert codes.count(503) >= 1 and set(codes) <= {200, 503}, codes
        assert codes.count(200) >= 3  # one running + a full queue of two
        for x, (status, body) in zip(xs, results):
            if status == 200:
                np.testing.assert_allclose(output_of(body), mlp(x), rtol=1e-6, atol=1e-6)
            else:
                assert "requests waiting" in json.loads(body)["error"]
        text = request(s.port, "GET", "/metrics")[2].decode()
        assert f'ember_requests_total{{code="503",model="slow"}} {codes.count(503)}.0' in text


def test_stop_finishes_in_flight_requests(mlp):
    config = ServeConfig(batch=BatchConfig(max_batch_size=4, max_delay_ms=1, max_queue=64))
    xs = [np.random.default_rng(k).standard_normal((1, 8)).astype(np.float32) for k in range(12)]
    s = ThreadServer(create_app({"slow": Slow(mlp, 0.2)}, config)).__enter__()
    threads, results = fire(s.port, "slow", xs)
    deadline = time.monotonic() + 10
    while s.server.config.app.state.models["slow"].batcher.pending < len(xs):
        assert time.monotonic() < deadline, "requests did not arrive"
        time.sleep(0.01)
    s.stop()  # like SIGTERM: stop listening, finish what was accepted
    for t in threads:
        t.join(30)
    for x, (status, body) in zip(xs, results):
        assert status == 200, body
        np.testing.assert_allclose(output_of(body), mlp(x), rtol=1e-6, atol=1e-6)


def test_ember_serve_command_two_models_and_sigterm(mlp, tmp_path):
    mlp.save(tmp_path / "mlp.ember")
    ember.compile(mlp_graph(1, out=3)).save(tmp_path / "other.ember")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ember.cli", "serve", str(tmp_path / "mlp.ember"),
         f"second={tmp_path / 'other.ember'}", "--port", str(port), "--max-delay-ms", "400",
         "--log-level", "warning"],
        env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        wait_ready(port, proc=proc)
        assert request(port, "GET", "/v2/models/mlp")[0] == 200
        status, _, body = request(port, "GET", "/v2/models/second")
        assert status == 200 and json.loads(body)["outputs"][0]["shape"] == [-1, 3]
        xs = [np.random.default_rng(k).standard_normal((2, 8)).astype(np.float32) for k in range(10)]
        threads, results = fire(port, "mlp", xs)
        deadline = time.monotonic() + 10
        while 'ember_requests_in_flight{model="mlp"} 10.0' not in request(port, "GET", "/metrics")[2].decode():
            assert time.monotonic() < deadline, "requests did not arrive"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)  # while all ten wait in the batcher
        for t in threads:
            t.join(30)
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal when done
        for x, (status, body) in zip(xs, results):
            assert status == 200, body
            np.testing.assert_allclose(output_of(body), mlp(x), rtol=1e-6, atol=1e-6)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
