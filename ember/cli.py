"""The ``ember`` command: demo, inspect, version."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from . import __version__
from .errors import EmberError


def _table(headers, rows) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) if k else str(x).ljust(w)  # noqa: E731
                               for k, (x, w) in enumerate(zip(r, widths)))
    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def cmd_demo(args) -> int:
    import numpy as np
    import torch

    import ember
    from . import demo
    from .timing import fmt_time, measure
    torch.set_num_threads(args.threads) if args.threads else None
    rows = []
    for name in args.models:
        model, inputs = demo.MODELS[name]()
        print(f"{name}: compiling ...", file=sys.stderr)
        compiled = ember.compile(model, inputs)
        with torch.no_grad():
            want = model(*inputs)
        got = compiled(*inputs)
        want_t = want.last_hidden_state if hasattr(want, "last_hidden_state") else want
        got_t = got.last_hidden_state if hasattr(got, "last_hidden_state") else got
        err = float((got_t - want_t).abs().max() / (want_t.abs().max() + 1e-12))
        ok = bool(np.isfinite(err) and err <= 1e-4)

        def eager():
            with torch.no_grad():
                model(*inputs)
        t = measure({"torch": eager, "ember": lambda: compiled(*inputs)}, rounds=args.rounds)
        rows.append([name, "x".join(map(str, inputs[0].shape)), f"{err:.1e}", "yes" if ok else "NO",
                     fmt_time(t["torch"]["median"]), fmt_time(t["ember"]["median"]),
                     f"{t['torch']['median'] / t['ember']['median']:.2f}x"])
    print(_table(["model", "input", "max rel err", "matches", "PyTorch eager", "Ember", "speed-up"], rows))
    print(f"\nmedians of up to {args.rounds} interleaved runs, {torch.get_num_threads()} torch threads")
    return 0 if all(r[3] == "yes" for r in rows) else 1


def _load_target(target: str):
    """``file.ir`` (text IR), ``demo:NAME``, or ``package.module:function`` -> graph or model."""
    import ember.ir as ir
    if target.startswith("demo:"):
        from . import demo
        return demo.MODELS[target[5:]]()
    p = Path(target)
    if p.suffix in (".ir", ".txt") and p.exists():
        return ir.parse(p.read_text()), None
    if ":" in target:
        mod, fn = target.split(":", 1)
        return getattr(importlib.import_module(mod), fn)()
    raise EmberError(f"cannot load {target!r}: give a text IR file (.ir), demo:NAME "
                     f"(linear, mlp, bert) or module:function returning (model, example_inputs)")


def cmd_inspect(args) -> int:
    import ember
    from .api import import_model
    from .passes import default_pipeline
    model, inputs = _load_target(args.model)
    if args.html:
        from .report import write_report
        path = write_report(args.html, model, inputs, title=args.model, opt_level=args.opt_level,
                            verify=args.verify)
        print(f"wrote {path}")
        return 0
    g = import_model(model, inputs)
    print(f"# imported: {len(g.nodes)} nodes {g.stats()}")
    print(g)
    from .api import _numpy_inputs
    pm = default_pipeline(args.opt_level, dump_after=args.after or [], verify=args.verify,
                          example_inputs=_numpy_inputs(inputs, g))
    g = pm.run(g)
    for name, text in pm.dumps.items():
        print(f"\n# after {name}: {len(text.splitlines()) - 2} lines")
        print(text)
    print(f"\n# passes (-O{args.opt_level})\n" + pm.report())
    if args.c:
        # the C that ember.compile builds at this level (kernel fusion runs after lowering; the
        # example inputs size the kernel forms of symbolic dims)
        cm = ember.compile(g, inputs, opt_level=args.opt_level)
        print(f"\n# kernels: {cm.kernels}; fusions: {len(cm.fusions)}")
        for f in cm.fusions:
            print(f"#   {f}")
        print("\n# generated C")
        print(cm.source)
    return 0


# Commands that live next to the code they drive: each module has ``add_commands(subparsers)``
# and sets ``fn`` on its parsers. A module not written yet is skipped.
COMMAND_MODULES = ("ember.commands.compile", "ember.commands.run", "ember.commands.bench",
                   "ember.commands.serve", "ember.commands.onnx", "ember.commands.quant")


def _add_plugin_commands(sub) -> None:
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        mod.add_commands(sub)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ember", description="Ember: compile PyTorch models to native code.")
    parser.add_argument("--version", action="version", version=f"ember {__version__}")
    sub = parser.add_subparsers(dest="cmd")
    d = sub.add_parser("demo", help="compile the primer's model, an MLP and a small BERT; compare with PyTorch")
    d.add_argument("--models", nargs="+", default=["linear", "mlp", "bert"], choices=["linear", "mlp", "bert"])
    d.add_argument("--rounds", type=int, default=200)
    d.add_argument("--threads", type=int, default=None)
    d.set_defaults(fn=cmd_demo)
    i = sub.add_parser("inspect", help="print a model's IR (after import and after passes)")
    i.add_argument("model", help="text IR file (.ir), demo:NAME, or module:function -> (model, inputs)")
    i.add_argument("--after", action="append", help="print the IR after this pass (or 'all')")
    i.add_argument("-O", "--opt-level", type=int, default=2, choices=[0, 1, 2])
    i.add_argument("--c", action="store_true", help="also print the generated C")
    i.add_argument("--verify", action="store_true", default=None,
                   help="check every pass against the reference interpreter")
    i.add_argument("--html", metavar="FILE", help="write a self-contained HTML report instead")
    i.set_defaults(fn=cmd_inspect)
    _add_plugin_commands(sub)
    args = parser.parse_args(argv)
    if not args.cmd:
        parser.print_help()
        return 0
    try:
        return args.fn(args)
    except EmberError as e:
        print(f"ember: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
