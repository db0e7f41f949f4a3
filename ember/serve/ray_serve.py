"""Ember models under Ray Serve, speaking the same Open Inference Protocol (KServe v2).

Each replica loads the artifact itself (numpy only); Ray Serve's ``@serve.batch`` does the
dynamic batching and Ray scales replicas across machines. See docs/serving.md.

    from ray import serve
    from ember.serve.ray_serve import ember_app
    serve.run(ember_app("mlp.ember", num_replicas=2), route_prefix="/")
    # POST http://127.0.0.1:8000/v2/models/mlp/infer
"""
from __future__ import annotations

from pathlib import Path

from . import protocol
from .batching import batch_key, run_batch
from .model import ModelFront
from .protocol import RequestError


def ember_app(path: str, name: str | None = None, *, num_replicas: int = 1, num_cpus: float = 1,
              max_batch_size: int = 32, batch_wait_timeout_s: float = 0.002,
              max_ongoing_requests: int = 64):
    """A Ray Serve application serving the artifact at ``path`` under ``name`` (its stem).

    >>> serve.run(ember_app("mlp.ember"), route_prefix="/")
    >>> # then POST /v2/models/mlp/infer as with `ember serve`
    """
    from ray import serve
    from starlette.responses import JSONResponse, Response

    path = str(Path(path).resolve())
    name = name or Path(path).stem

    @serve.deployment(name=f"ember-{name}", num_replicas=num_replicas,
                      ray_actor_options={"num_cpus": num_cpus},
                      max_ongoing_requests=max_ongoing_requests)
    class EmberModel:
        def __init__(self):
            import ember
            self.front = ModelFront(name, ember.load(path))

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        async def run(self, requests: list[list]) -> list[list]:
            groups: dict[tuple, list[int]] = {}
            for k, arrays in enumerate(requests):
                groups.setdefault(batch_key(arrays), []).append(k)
            outs: list = [None] * len(requests)
            for ks in groups.values():
                for k, o in zip(ks, run_batch(self.front.model, [requests[k] for k in ks])):
                    outs[k] = o
            return outs

        async def __call__(self, request):
            path = request.url.path.rstrip("/")
            try:
                if path.endswith(("/v2/health/live", "/v2/health/ready")):
                    return JSONResponse({path.rsplit("/", 1)[1]: True})
                parts = path.split("/")
                if "models" not in parts[:-1]:
                    raise RequestError(f"no route {request.url.path}", 404)
                rest = parts[len(parts) - parts[::-1].index("models"):]  # NAME[/versions/V][/ACTION]
                action = rest[-1] if len(rest) > 1 and rest[-1] in ("ready", "infer") else "metadata"
                if rest[0] != name:
                    raise RequestError(f"unknown model {rest[0]!r}; this deployment serves {name!r}")
                if action == "ready":
                    return JSONResponse({"name": name, "ready": True})
                if action == "metadata":
                    return JSONResponse(self.front.metadata)
                hl = request.headers.get(protocol.HEADER_LENGTH)
                req = protocol.parse_infer(await request.body(), int(hl) if hl else None)
                outs = await self.run(self.front.arrays(req))
                body, headers = protocol.encode_infer(name, req, self.front.outputs_for(req, outs))
                return Response(body, headers=headers, media_type=headers["content-type"])
            except RequestError as e:
                return JSONResponse({"error": str(e)}, status_code=e.status)
            except ValueError as e:  # e.g. a non-numeric header length
                return JSONResponse({"error": str(e)}, status_code=400)

    return EmberModel.bind()


__all__ = ["ember_app"]
