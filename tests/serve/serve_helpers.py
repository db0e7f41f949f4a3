"""Small models, a real uvicorn server on a loopback port in a thread, and an HTTP client."""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import numpy as np
import uvicorn

from ember.ir import Graph, TensorType, dtypes, sym


def mlp_graph(seed=0, out=4, batch_max=64):
    rng = np.random.default_rng(seed)
    g = Graph()
    x = g.add_input("x", TensorType(dtypes.f32, (sym("batch"), 8)))
    w1 = g.add_const(rng.standard_normal((16, 8)).astype(np.float32), "w1")
    h = g.op("relu", [g.op("linear", [x, w1])])
    g.outputs = [g.op("linear", [h, g.add_const(rng.standard_normal((out, 16)).astype(np.float32), "w2")])]
    g.output_names = ["y"]
    g.sym_ranges = {"batch": (1, batch_max)}
    return g


class ThreadServer:
    """``with ThreadServer(app) as s: s.port`` - uvicorn on 127.0.0.1, an OS-chosen port."""

    def __init__(self, app, graceful=10.0):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    timeout_graceful_shutdown=graceful))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)

    def __exit__(self, *exc):
        self.stop()


def request(port, method, path, body=None, headers=None, timeout=60):
    """(status, headers with lower-case names, body bytes)."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def infer_body(x: np.ndarray, name="x", datatype="FP32", **extra) -> dict:
    return {"inputs": [{"name": name, "shape": list(x.shape), "datatype": datatype,
                        "data": x.reshape(-1).tolist()}], **extra}


def output_of(body: bytes, k=0) -> np.ndarray:
    out = json.loads(body)["outputs"][k]
    return np.array(out["data"], dtype=np.float32).reshape(out["shape"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, timeout=60.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if request(port, "GET", "/v2/health/ready", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("server not ready")
