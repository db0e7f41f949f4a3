"""``ember run model.ember --input x=x.npy [--dim batch=4] [-o out.npz]``: run a saved model
(numpy only), from files or on random inputs of the declared shapes."""
from __future__ import annotations

import sys

import numpy as np

from ..errors import EmberError


def parse_pairs(pairs: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for p in pairs or []:
        name, eq, value = p.partition("=")
        if not eq or not name or not value:
            raise EmberError(f"bad {what} {p!r}: use NAME=VALUE")
        out[name] = value
    return out


def random_inputs(specs, dims: dict[str, int], seed: int = 0) -> list[np.ndarray]:
    """Inputs of the declared shapes: symbolic dims from ``dims`` (default 1); floats drawn
    from a normal distribution, integers (token ids...) from [0, 10), booleans all True."""
    from ..ir.symbolic import evaluate, free_symbols
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in specs:
        shape = [int(evaluate(d, {s: dims.get(s, 1) for s in free_symbols(d)})) for d in spec.dims()]
        dt = np.dtype(spec_numpy_dtype(spec))
        if dt.kind == "f":
            arrays.append(rng.standard_normal(shape).astype(dt))
        elif dt.kind == "b":
            arrays.append(np.ones(shape, dt))
        else:
            arrays.append(rng.integers(0, 10, shape).astype(dt))
    return arrays


def spec_numpy_dtype(spec):
    from ..ir import dtypes
    return dtypes.parse(spec.dtype).np


def model_inputs(model, files: dict[str, str], dims: dict[str, int]) -> list[np.ndarray]:
    names = [s.name for s in model.inputs]
    unknown = sorted(set(files) - set(names))
    if unknown:
        raise EmberError(f"--input {', '.join(unknown)}: the model's inputs are {', '.join(names)}")
    arrays = random_inputs(model.inputs, dims)
    for k, name in enumerate(names):
        if name in files:
            try:
                arrays[k] = np.load(files[name])
            except (OSError, ValueError) as e:
                raise EmberError(f"--input {name}={files[name]}: cannot read it as .npy ({e})") from None
    return arrays


def cmd_run(args) -> int:
    import ember
    model = ember.load(args.model, threads=args.threads)
    dims = {k: int(v) for k, v in parse_pairs(args.dim, "--dim").items()}
    arrays = model_inputs(model, parse_pairs(args.input, "--input"), dims)
    outs = model.run_numpy(arrays)
    for spec, o in zip(model.outputs, outs):
        print(f"{spec.name}: {o.dtype}{list(o.shape)}  mean {float(np.mean(o)):.6g}  "
              f"min {float(np.min(o)):.6g}  max {float(np.max(o)):.6g}")
    if args.output:
        np.savez(args.output, **{s.name: o for s, o in zip(model.outputs, outs)})
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("run", help="run a compiled artifact on .npy inputs (or random ones)")
    p.add_argument("model", help="an artifact folder written by `ember compile`")
    p.add_argument("--input", action="append", metavar="NAME=FILE.npy",
                   help="an input from a .npy file; inputs not given are random. Repeatable")
    p.add_argument("--dim", action="append", metavar="SYMBOL=N",
                   help="size of a symbolic dim for random inputs (default 1). Repeatable")
    p.add_argument("-o", "--output", metavar="OUT.npz", help="write the outputs, by name")
    p.add_argument("--threads", type=int, default=None, help="threads (default: EMBER_NUM_THREADS or all cores)")
    p.set_defaults(fn=cmd_run)
