"""``ember bench MODEL``: one model timed by Ember next to the other runtimes, in one process.

MODEL is ``module:function`` returning (torch model, example inputs), ``demo:NAME``, an
``.onnx`` file, or a compiled artifact. Contenders run interleaved (every one once per
round) and the table gives medians and the ratio to Ember: PyTorch eager for torch models,
``--inductor`` adds torch.compile, ``--onnxruntime`` adds ONNX Runtime (torch models are
exported with torch.onnx.export). The whole benchmark suite is ``benchmarks/bench_suite.py``.
"""
from __future__ import annotations

import io
import os
import sys
import warnings
from pathlib import Path

from ..errors import EmberError


def _torch_contenders(model, inputs, args) -> dict:
    import torch
    model = model.eval()
    out = {"PyTorch eager": lambda: _no_grad(model, inputs)}
    if args.inductor:
        compiled = torch.compile(model)
        out["torch.compile"] = lambda: _no_grad(compiled, inputs)
    if args.onnxruntime:
        f = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, tuple(inputs), f, dynamo=False, opset_version=17)
        out.update(_ort_contender(f.getvalue(), [i.numpy() for i in inputs]))
    return out


def _no_grad(model, inputs):
    import torch
    with torch.no_grad():
        return model(*inputs)


def _ort_contender(data, arrays) -> dict:
    try:
        import onnxruntime as ort
    except ModuleNotFoundError:
        raise EmberError("--onnxruntime needs the onnxruntime package") from None
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    feeds = {i.name: a for i, a in zip(sess.get_inputs(), arrays)}
    return {"ONNX Runtime": lambda: sess.run(None, feeds)}


def cmd_bench(args) -> int:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # see benchmarks/bench_suite.py
    import ember
    from ..timing import fmt_time, measure
    from .run import model_inputs, parse_pairs
    src = Path(args.model)
    dims = {k: int(v) for k, v in parse_pairs(args.dim, "--dim").items()}
    others: dict = {}
    if src.is_dir():
        compiled = ember.load(src, threads=args.threads)
        arrays = model_inputs(compiled, {}, dims)
    elif src.suffix == ".onnx":
        compiled = ember.compile(str(src), threads=args.threads)
        arrays = model_inputs(compiled, {}, dims)
        if args.onnxruntime:
            others = _ort_contender(src.read_bytes(), arrays)
    else:
        from ..cli import _load_target
        model, inputs = _load_target(args.model)
        compiled = ember.compile(model, inputs, threads=args.threads, quantize=args.quantize)
        arrays = [i.detach().numpy() if hasattr(i, "detach") else i for i in (inputs or ())]
        if not hasattr(model, "graph") and hasattr(model, "forward"):
            others = _torch_contenders(model, inputs, args)
    contenders = {"Ember": lambda: compiled.run_numpy(arrays), **others}
    res = measure(contenders, rounds=args.rounds, max_seconds=args.max_seconds)
    ember_t = res["Ember"]["median"]
    shapes = ", ".join(f"{s.name}{list(a.shape)}" for s, a in zip(compiled.inputs, arrays))
    print(f"{args.model} ({shapes}), {compiled.threads} thread(s), medians of "
          f"{res['Ember']['runs']} interleaved rounds")
    print(f"{'runtime':<16} {'median':>10} {'p10':>10} {'p90':>10}  Ember is")
    for name, r in res.items():
        ratio = "" if name == "Ember" else f"{r['median'] / ember_t:.2f}x faster" \
            if r["median"] >= ember_t else f"{ember_t / r['median']:.2f}x slower"
        print(f"{name:<16} {fmt_time(r['median']):>10} {fmt_time(r['p10']):>10} {fmt_time(r['p90']):>10}  {ratio}")
    if args.profile:
        from ..runtime.profile import profile_kernels
        print()
        print(profile_kernels(compiled.native, arrays, runs=50).table(args.profile))
    sys.stdout.flush()
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("bench", help="time one model with Ember next to PyTorch / torch.compile / ONNX Runtime")
    p.add_argument("model", help="module:function -> (model, example_inputs), demo:NAME, an .onnx file, "
                                 "or an artifact folder")
    p.add_argument("--rounds", type=int, default=200, help="interleaved rounds (default 200)")
    p.add_argument("--max-seconds", type=float, default=20.0, help="stop after this long (default 20)")
    p.add_argument("--inductor", action="store_true", help="also time torch.compile (inductor)")
    p.add_argument("--onnxruntime", action="store_true", help="also time ONNX Runtime")
    p.add_argument("--dim", action="append", metavar="SYMBOL=N",
                   help="size of a symbolic dim for an .onnx file or artifact (default 1)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quantize", choices=["dynamic"], default=None, help="time the int8 model")
    p.add_argument("--profile", type=int, nargs="?", const=15, default=0, metavar="N",
                   help="then time each kernel and list the N slowest (default 15)")
    p.set_defaults(fn=cmd_bench)
