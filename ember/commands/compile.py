"""``ember compile MODEL -o model.ember [--dynamic ...] [--emit-c-header model.h]``."""
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
        dynamic = parse_dynamic(args.dynamic or [], _input_names(model, inputs)) or None
        compiled = ember.compile(model, inputs, dynamic=dynamic, opt_level=args.opt_level)
        compiled_path = artifact.save_model(compiled, args.output, include_ir=not args.no_ir)
        ins = ", ".join(f"{s.name}: {s.describe()}" for s in compiled.inputs)
        print(f"wrote {compiled_path} ({ins})", file=sys.stderr)
    if args.emit_c_header:
        header = c_header.render(artifact.read_manifest(compiled_path))
        Path(args.emit_c_header).write_text(header)
        print(f"wrote {args.emit_c_header}", file=sys.stderr)
    return 0


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
    p.add_argument("--no-ir", action="store_true",
                   help="leave the IR out (the artifact then cannot be rebuilt for another CPU)")
    p.set_defaults(fn=cmd_compile)
