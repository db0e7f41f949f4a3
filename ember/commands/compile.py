"""``ember compile MODEL -o model.ember [--dynamic ...] [--quantize dynamic|static
[--calibration data.npz]] [--emit-c-header model.h]``."""
from __future__ import annotations

import inspect
import sys
from pathlib import Path

from ..errors import EmberError


def _input_names(model, example_inputs) -> list[str]:
    """Names the frontend will give the inputs: forward's parameters, or the ONNX inputs."""
    if isinstance(model, (str, Path)) and str(model).endswith(".onnx"):
        import onnx
        graph = onnx.load(str(model), load_external_data=False).graph
        inits = {i.name for i in graph.initializer}
        return [i.name for i in graph.input if i.name not in inits]
    fwd = getattr(model, "forward", None)
    if fwd is None:
        return []
    params = [p.name for p in inspect.signature(fwd).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return params[:len(example_inputs or ())]


def parse_dynamic(specs: list[str], names: list[str]) -> dict:
    """``["batch"]`` -> dim 0 of every input is ``batch``; ``["x:1=seq:1:512"]`` -> dim 1 of
    input x is ``seq`` in [1, 512].

    >>> parse_dynamic(["batch", "ids:1=seq:1:128"], ["ids", "mask"])
    {'ids': {0: 'batch', 1: ('seq', 1, 128)}, 'mask': {0: 'batch'}}
    """
    out: dict = {}
    for spec in specs:
        if "=" in spec:
            where, _, what = spec.partition("=")
            inp, _, dim = where.partition(":")
            parts = what.split(":")
            try:
                dim_i = int(dim or 0)
                sym = parts[0] if len(parts) == 1 else (parts[0], int(parts[1]), int(parts[2]))
            except (ValueError, IndexError):
                raise EmberError(f"bad --dynamic {spec!r}: use NAME, INPUT:DIM=NAME or "
                                 f"INPUT:DIM=NAME:MIN:MAX") from None
            out.setdefault(inp, {})[dim_i] = sym
        else:
            if not names:
                raise EmberError(f"--dynamic {spec}: cannot tell this model's input names; "
                                 f"use INPUT:DIM={spec}")
            for n in names:
                out.setdefault(n, {})[0] = spec
    return out


def load_calibration(path, names: list[str], batch: int) -> list[tuple]:
    """Calibration batches from an ``.npz``: one array per model input, by input name (or
    ``arr_0, arr_1...`` in input order), samples along axis 0, cut into batches of ``batch``."""
    import numpy as np
    try:
        data = np.load(path)
    except (OSError, ValueError) as e:
        raise EmberError(f"--calibration {path}: not a readable .npz file ({e})") from None
    keys = list(data.files)
    if names and all(n in keys for n in names):
        arrays = [data[n] for n in names]
    elif names and len(keys) == len(names) and all(k == f"arr_{i}" for i, k in enumerate(keys)):
        arrays = [data[k] for k in keys]
    else:
        raise EmberError(f"--calibration {path} holds {', '.join(keys) or 'nothing'}; the model's inputs "
                         f"are {', '.join(names)}: save one array per input under its name "
                         f"(np.savez(path, {names[0] if names else 'x'}=...))")
    n = {a.shape[0] if a.ndim else 0 for a in arrays}
    if len(n) != 1 or 0 in n:
        raise EmberError(f"--calibration {path}: every array needs the same number of samples "
                         f"along axis 0, got shapes {[a.shape for a in arrays]}")
    total = n.pop()
    return [tuple(a[i:i + batch] for a in arrays) for i in range(0, total, batch)]


def quant_config(args, names: list[str]):
    """The ``ember.quant`` config that the --quantize options ask for (None: no quantization)."""
    from .. import quant
    if args.quantize is None:
        if args.calibration:
            raise EmberError("--calibration is only used with --quantize static")
        return None
    common = dict(min_cosine=args.min_cosine, force=args.force_int8)
    if args.quantize == "dynamic":
        return quant.dynamic(**common)
    if not args.calibration:
        raise EmberError("--quantize static needs --calibration data.npz (representative inputs, "
                         "one array per model input, samples along axis 0)")
    batches = load_calibration(args.calibration, names, args.calibration_batch)
    return quant.static(batches, observer=args.observer, **common)


def cmd_compile(args) -> int:
    import ember
    from ..cli import _load_target
    from ..runtime import artifact, c_header

    src = Path(args.model)
    if src.is_dir() and (src / artifact.MANIFEST).exists():  # an artifact: header only
        if not args.emit_c_header:
            raise EmberError(f"{src} is already compiled; give --emit-c-header FILE to write its header")
        compiled_path = src
    else:
        if not args.output:
            raise EmberError("give -o OUT.ember: where to write the compiled model")
        if src.suffix == ".onnx":
            model, inputs = str(src), None
        else:
            model, inputs = _load_target(args.model)
        names = _input_names(model, inputs)
        dynamic = parse_dynamic(args.dynamic or [], names) or None
        quantize = quant_config(args, names or _graph_input_names(model))
        compiled = ember.compile(model, inputs, dynamic=dynamic, opt_level=args.opt_level,
                                 quantize=quantize)
        if compiled.quant_report is not None:
            print(compiled.quant_report, file=sys.stderr)
        compiled_path = artifact.save_model(compiled, args.output, include_ir=not args.no_ir)
        ins = ", ".join(f"{s.name}: {s.describe()}" for s in compiled.inputs)
        print(f"wrote {compiled_path} ({ins})", file=sys.stderr)
    if args.emit_c_header:
        header = c_header.render(artifact.read_manifest(compiled_path))
        Path(args.emit_c_header).write_text(header)
        print(f"wrote {args.emit_c_header}", file=sys.stderr)
    return 0


def _graph_input_names(model) -> list[str]:
    """Input names of an Ember graph (a text IR file loads as one)."""
    return [v.name for v in getattr(model, "inputs", [])]


def add_commands(sub) -> None:
    p = sub.add_parser("compile", help="compile a model into a standalone artifact (runs with numpy only)")
    p.add_argument("model", help="module:function -> (model, example_inputs), demo:NAME, a text IR "
                                 "file (.ir), an .onnx file, or an existing .ember (with --emit-c-header)")
    p.add_argument("-o", "--output", help="artifact folder to write, e.g. model.ember")
    p.add_argument("--dynamic", action="append", metavar="SPEC",
                   help="NAME: dim 0 of every input is the symbol NAME (e.g. batch); "
                        "INPUT:DIM=NAME[:MIN:MAX] for one dim. Repeatable")
    p.add_argument("--emit-c-header", metavar="FILE", help="also write the C header of the library")
    p.add_argument("-O", "--opt-level", type=int, default=2, choices=[0, 1, 2])
    q = p.add_argument_group("int8 quantization (docs/quantization.md)")
    q.add_argument("--quantize", choices=["dynamic", "static"],
                   help="dynamic: int8 weights, activations quantized at run time; static: fixed "
                        "activation scales learnt from --calibration")
    q.add_argument("--calibration", metavar="NPZ",
                   help="calibration inputs for --quantize static: one array per input (by name), "
                        "samples along axis 0")
    q.add_argument("--calibration-batch", type=int, default=8, metavar="N",
                   help="samples per calibration batch (default 8)")
    q.add_argument("--observer", default="minmax", choices=["minmax", "percentile", "mse", "entropy"],
                   help="how static quantization picks activation ranges")
    q.add_argument("--min-cosine", type=float, metavar="C",
                   help="accuracy guard: keep layers fp32 until outputs stay this close to fp32")
    q.add_argument("--force-int8", action="store_true",
                   help="keep int8 even where Ember measures it slower than fp32")
    p.add_argument("--no-ir", action="store_true",
                   help="leave the IR out (the artifact then cannot be rebuilt for another CPU)")
    p.set_defaults(fn=cmd_compile)
