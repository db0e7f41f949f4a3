"""The HTTP server: Open Inference Protocol (KServe v2) routes over FastAPI.

    GET  /v2/health/live, /v2/health/ready, /v2, /metrics
    GET  /v2/models/{name}[/versions/{v}], /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer     JSON tensors or the binary-data extension

Errors answer ``{"error": message}``: 400 for a bad request or unknown model, 413 for a
body over the size limit, 503 when the model's queue is full.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from .. import __version__
from ..errors import EmberError
from . import protocol
from .batching import BatchConfig, Batcher, QueueFull
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .model import ModelFront
from .protocol import RequestError


@dataclass
class ServeConfig:
    batch: BatchConfig = field(default_factory=BatchConfig)
    max_request_bytes: int = 64 * 1024 * 1024


class ServedModel(ModelFront):
    """A model behind a name with its batching queue."""

    def __init__(self, name: str, model, config: ServeConfig, metrics: Metrics):
        super().__init__(name, model)
        self.batcher = Batcher(name, model, config.batch, metrics)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"request body of {declared} bytes is over the limit of {limit}", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(f"request body is over the limit of {limit} bytes", 413)
    return bytes(body)


def create_app(models: dict, config: ServeConfig | None = None) -> FastAPI:
    """A FastAPI app serving ``models`` (name -> CompiledModel or anything with ``inputs``,
    ``outputs``, ``native.bind`` and ``run_numpy``).

    >>> app = create_app({"mlp": ember.load("mlp.ember")})
    >>> uvicorn.run(app, port=8000)
    """
    config = config or ServeConfig()
    metrics = Metrics()
    served = {name: ServedModel(name, m, config, metrics) for name, m in models.items()}
    state = {"ready": False}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for s in served.values():
            await s.batcher.start()
            metrics.queue_depth.labels(s.name).set_function(s.batcher.depth)
        state["ready"] = True
        yield
        # The server has stopped taking connections and answered what it had; finish the
        # queues (nothing should be left, but a request must never be dropped).
        state["ready"] = False
        for s in served.values():
            await s.batcher.close()

    app = FastAPI(title="Ember model server", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.models, app.state.metrics, app.state.config = served, metrics, config

    def lookup(name: str) -> ServedModel:
        s = served.get(name)
        if s is None:
            raise RequestError(f"unknown model {name!r}; this server has "
                               f"{', '.join(sorted(served)) or 'no models'}")
        return s

    @app.exception_handler(RequestError)
    async def _request_error(request, exc: RequestError):
        return _error(exc.status, str(exc))

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        return JSONResponse({"ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    @app.get("/v2")
    async def server_metadata():
        return {"name": "ember", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None):
        return lookup(name).metadata

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None):
        lookup(name)
        return JSONResponse({"name": name, "ready": state["ready"]},
                            status_code=200 if state["ready"] else 503)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None):
        t0 = time.perf_counter()
        model = served.get(name)
        label = name if model is not None else "_unknown"
        metrics.in_flight.labels(label).inc()
        status = 500
        try:
            model = lookup(name)
            body = await _read_body(request, config.max_request_bytes)
            hl = request.headers.get(protocol.HEADER_LENGTH)
            if hl is not None and not hl.isdigit():
                raise RequestError(f"bad Inference-Header-Content-Length {hl!r}")
            req = protocol.parse_infer(body, int(hl) if hl is not None else None)
            arrays = model.arrays(req)
            try:
                outs = await model.batcher.submit(arrays)
            except QueueFull as e:
                raise RequestError(str(e), 503) from None
            content, headers = protocol.encode_infer(name, req, model.outputs_for(req, outs))
            status = 200
            return Response(content, headers=headers, media_type=headers["content-type"])
        except RequestError as e:
            status = e.status
            return _error(e.status, str(e))
        except EmberError as e:  # the model refused the inputs after batching
            status = 400
            return _error(400, str(e))
        finally:
            metrics.in_flight.labels(label).dec()
            metrics.requests.labels(label, str(status)).inc()
            if status == 200:
                metrics.latency.labels(name).observe(time.perf_counter() - t0)

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def model_name(path: str) -> tuple[str, str]:
    """``"name=path"`` -> (name, path); a bare path is named by its file's stem.

    >>> model_name("models/bert.ember")
    ('bert', 'models/bert.ember')
    """
    if "=" in path:
        name, _, p = path.partition("=")
        return name, p
    from pathlib import Path
    return Path(path.rstrip("/")).stem, path


__all__ = ["ServeConfig", "create_app", "model_name"]
