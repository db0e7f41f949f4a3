"""Prometheus metrics of one server (its own registry, so several servers in one process,
as in tests, do not collide)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for app.py)

_LATENCY = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)


class Metrics:
    """Counters and histograms labelled by model.

    >>> m = Metrics(); m.requests.labels("mlp", "200").inc()
    >>> b"ember_requests_total" in m.render()
    True
    """

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("ember_requests", "Inference requests answered, by HTTP status",
                                ["model", "code"], registry=r)
        self.latency = Histogram("ember_request_latency_seconds", "Infer request time in the server",
                                 ["model"], buckets=_LATENCY, registry=r)
        self.inference = Histogram("ember_inference_seconds", "Time of one native model call",
                                   ["model"], buckets=_LATENCY, registry=r)
        self.batch_requests = Histogram("ember_batch_requests", "Requests served by one model call",
                                        ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.queue_depth = Gauge("ember_queue_depth", "Requests waiting for a model call",
                                 ["model"], registry=r)
        self.in_flight = Gauge("ember_requests_in_flight", "Infer requests being handled",
                               ["model"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
