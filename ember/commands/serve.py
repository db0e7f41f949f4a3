"""``ember serve model.ember [name=other.ember ...] --port 8000``: the KServe v2 HTTP server."""
from __future__ import annotations

import sys

from ..errors import EmberError


def cmd_serve(args) -> int:
    try:
        import uvicorn

        from ..serve import BatchConfig, ServeConfig, create_app, model_name
    except ModuleNotFoundError as e:
        raise EmberError(f"ember serve needs {e.name}: pip install 'ember-ml[serve]'") from None
    import ember
    models = {}
    for spec in args.models:
        name, path = model_name(spec)
        if name in models:
            raise EmberError(f"two models are named {name!r}; name one with NAME=PATH")
        models[name] = ember.load(path, rebuild=args.rebuild, threads=args.threads)
        print(f"loaded {name} from {path}: {models[name]}", file=sys.stderr)
    batch = BatchConfig(max_batch_size=1 if args.no_batching else args.max_batch_size,
                        max_delay_ms=args.max_delay_ms, max_queue=args.max_queue)
    app = create_app(models, ServeConfig(batch=batch, max_request_bytes=args.max_request_bytes))
    # uvicorn answers SIGINT/SIGTERM by closing the listener, finishing in-flight requests
    # (up to --graceful-timeout), then running the app's shutdown, which drains the queues.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=args.graceful_timeout, access_log=args.access_log)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("serve", help="serve models over HTTP (Open Inference Protocol / KServe v2)")
    p.add_argument("models", nargs="+", metavar="[NAME=]MODEL.ember",
                   help="artifacts to serve; a model is named by its file's stem unless NAME= is given")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=int, default=32,
                   help="rows gathered into one model call (dynamic batching)")
    p.add_argument("--max-delay-ms", type=float, default=2.0,
                   help="longest a request waits for others to share its call")
    p.add_argument("--no-batching", action="store_true", help="one model call per request")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests waiting per model; more are answered 503")
    p.add_argument("--max-request-bytes", type=int, default=64 * 1024 * 1024,
                   help="larger request bodies are answered 413")
    p.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="seconds to finish in-flight requests on shutdown")
    p.add_argument("--rebuild", action="store_true", help="recompile each model for this machine")
    p.add_argument("--threads", type=int, default=None,
                   help="threads per model call (default: EMBER_NUM_THREADS, else all cores)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(fn=cmd_serve)
