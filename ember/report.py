"""The compilation report: ``ember inspect MODEL --html report.html``.

One self-contained page (inline CSS and SVG, no scripts or network): the graph drawn as
imported and after the pipeline, each pass with its time, node counts and rewrites, the
kernel fusion decisions, and the memory plan.
"""
from __future__ import annotations

import html
import time
from dataclasses import dataclass

from .ir import Graph
from .ir.symbolic import evaluate, free_symbols

BOX_W, BOX_H, GAP_X, GAP_Y = 150, 26, 18, 34
COLORS = {"nn": "#f4c27a", "reduce": "#9fd3c7", "elementwise": "#c6dbef", "shape": "#e0e0e0",
          "creation": "#d9d2e9", "other": "#ffffff"}


@dataclass
class Report:
    title: str
    before: Graph
    after: Graph
    records: list
    fusions: list
    plan: object
    kernels: int
    binding: dict
    compile_seconds: float


def graph_svg(g: Graph, max_nodes: int = 400) -> str:
    """A layered drawing: each node one row below its deepest input, left to right in order."""
    from .ir.ops import get
    nodes = g.nodes[:max_nodes]
    level: dict[int, int] = {}
    pos: dict[int, tuple[int, int]] = {}
    per_level: dict[int, int] = {}
    for v in g.inputs:
        level[id(v)] = 0
    for n in nodes:
        lv = 1 + max((level.get(id(i), 0) for i in n.inputs if i.kind != "const"), default=0)
        col = per_level.get(lv, 0)
        per_level[lv] = col + 1
        pos[id(n)] = (col, lv)
        for o in n.outputs:
            level[id(o)] = lv
    for k, v in enumerate(g.inputs):
        pos[id(v)] = (k, 0)
        per_level[0] = max(per_level.get(0, 0), k + 1)
    width = (max(per_level.values(), default=1)) * (BOX_W + GAP_X) + GAP_X
    height = (max(per_level, default=0) + 1) * (BOX_H + GAP_Y) + GAP_Y

    def xy(key):
        c, lv = pos[key]
        return GAP_X + c * (BOX_W + GAP_X), GAP_Y // 2 + lv * (BOX_H + GAP_Y)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="11">']
    for n in nodes:
        x2, y2 = xy(id(n))
        for i in n.inputs:
            src = id(i.producer) if i.producer is not None else id(i)
            if src in pos:
                x1, y1 = xy(src)
                parts.append(f'<line x1="{x1 + BOX_W // 2}" y1="{y1 + BOX_H}" x2="{x2 + BOX_W // 2}" '
                             f'y2="{y2}" stroke="#888" stroke-width="1"/>')
    for v in g.inputs:
        x, y = xy(id(v))
        parts.append(f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="4" fill="#b6e3a8" stroke="#333"/>'
                     f'<text x="{x + 6}" y="{y + 17}">{html.escape(v.name)[:20]}</text>')
    for n in nodes:
        x, y = xy(id(n))
        cat = get(n.op).category
        tip = html.escape(f"{n.op} -> {', '.join(str(o.type) for o in n.outputs)}" + (f"\n{n.source}" if n.source else ""))
        parts.append(f'<g><title>{tip}</title><rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="4" '
                     f'fill="{COLORS.get(cat, "#fff")}" stroke="#333"/>'
                     f'<text x="{x + 6}" y="{y + 17}">{html.escape(n.op)[:20]}</text></g>')
    parts.append("</svg>")
    more = f"<p>(first {max_nodes} of {len(g.nodes)} nodes drawn)</p>" if len(g.nodes) > max_nodes else ""
    return "".join(parts) + more


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render(r: Report) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(p.name)}</td><td>{p.seconds * 1e3:.2f}</td><td>{p.nodes_before}</td>"
        f"<td>{p.nodes_after}</td><td>{len(p.rewrites)}</td>"
        f"<td>{'' if p.max_error is None else f'{p.max_error:.1e}'}</td><td><details><summary>rewrites</summary>"
        f"<pre>{html.escape(chr(10).join(p.rewrites[:200])) or '(none)'}</pre></details></td></tr>"
        for p in r.records)
    fus = "".join(f"<li>{html.escape(str(f))}</li>" for f in r.fusions) or "<li>(none)</li>"
    env = r.binding
    planned, total = r.plan.summary(env)
    slots = "".join(
        f"<tr><td>{k}</td><td>{len(m)}</td><td>{_fmt_bytes(max(evaluate(r.plan.bytes_of(b), env) for b in m))}</td>"
        f"<td>{html.escape(', '.join(b.name for b in m))}</td></tr>" for k, m in enumerate(r.plan.slots))
    bind = ", ".join(f"{k}={v}" for k, v in env.items()) or "static shapes"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Ember report: {html.escape(r.title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
.graphs {{ display: flex; gap: 2em; align-items: flex-start; overflow-x: auto; }}
.graph {{ border: 1px solid #ddd; padding: 0.5em; }} pre {{ font-size: 11px; max-height: 20em; overflow: auto; }}
</style></head><body>
<h1 id="title">Ember compilation report: {html.escape(r.title)}</h1>
<p>Generated {time.strftime("%Y-%m-%d %H:%M:%S")}; compile time {r.compile_seconds:.2f} s;
{len(r.before.nodes)} graph nodes imported, {len(r.after.nodes)} after the pipeline, <b id="kernels">{r.kernels}</b> kernels.</p>
<h2>Graph</h2>
<div class="graphs"><div class="graph" id="graph-before"><h3>as imported ({len(r.before.nodes)} nodes)</h3>{graph_svg(r.before)}</div>
<div class="graph" id="graph-after"><h3>after the pipeline ({len(r.after.nodes)} nodes)</h3>{graph_svg(r.after)}</div></div>
<h2>Passes</h2>
<table id="passes"><tr><th>pass</th><th>ms</th><th>nodes before</th><th>nodes after</th><th>rewrites</th><th>verify: max rel err</th><th></th></tr>{rows}</table>
<h2>Kernel fusion</h2><ul id="fusions">{fus}</ul>
<h2>Memory plan</h2>
<p id="memory">At {html.escape(bind)}: workspace <b>{_fmt_bytes(planned)}</b> for intermediates that would take
{_fmt_bytes(total)} without reuse ({len(r.plan.slots)} slots).</p>
<table><tr><th>slot</th><th>buffers</th><th>size</th><th>members</th></tr>{slots}</table>
<h2>Final IR</h2><pre>{html.escape(str(r.after))}</pre>
</body></html>
"""


def build_report(model, example_inputs=None, title: str = "model", opt_level: int = 2,
                 verify: bool | None = None, binding: dict | None = None) -> Report:
    """Compile ``model`` and collect everything the page shows."""
    from .api import compile as ember_compile
    from .api import import_model
    before = import_model(model, example_inputs)
    t0 = time.perf_counter()
    cm = ember_compile(before, opt_level=opt_level, verify=verify)
    env = binding or {s: 64 for s in set().union(*(free_symbols(d) for v in before.inputs for d in v.shape))}
    return Report(title, before, cm.graph, cm.pass_records, cm.fusions, cm.memory_plan, cm.kernels, env,
                  time.perf_counter() - t0)


def write_report(path, model, example_inputs=None, **kw) -> str:
    page = render(build_report(model, example_inputs, **kw))
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return str(path)
