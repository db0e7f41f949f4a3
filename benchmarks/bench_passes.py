"""What the optimizer buys: ATen ops vs kernels, planned workspace, -O0 vs -O2 latency.

    .venv/bin/python benchmarks/bench_passes.py     # writes benchmarks/results/passes.md

Workloads: one BERT-base-shaped encoder layer (HF BertLayer, hidden 768, 12 heads, FFN 3072,
batch 1 x seq 128) and one ResNet basic block (64 channels, 56x56, batch 1).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import ember
from ember.timing import fmt_time, measure


class BertBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        from transformers import BertConfig
        from transformers.models.bert.modeling_bert import BertLayer
        self.layer = BertLayer(BertConfig(hidden_size=768, num_attention_heads=12, intermediate_size=3072))

    def forward(self, x):
        return self.layer(x)[0]


class BasicBlock(torch.nn.Module):
    def __init__(self, c=64):
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c)
        self.conv2, self.bn2 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + x)


def aten_ops(model, inputs) -> int:
    ep = torch.export.export(model, inputs).run_decompositions()
    return sum(1 for n in ep.graph.nodes if n.op == "call_function")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "passes.md"))
    args = ap.parse_args()
    torch.manual_seed(0)
    cases = [("BERT-base encoder layer, 1x128x768", BertBlock().eval(), (torch.randn(1, 128, 768),)),
             ("ResNet basic block, 1x64x56x56", BasicBlock().eval(), (torch.randn(1, 64, 56, 56),))]
    lines = ["# Optimizer effect (-O0 vs -O2)", "",
             f"`{' '.join([Path(sys.executable).name] + sys.argv)}`; medians of interleaved runs on a shared 2-core machine.", "",
             "| workload | ATen ops (exported) | graph nodes -O0 / -O2 | kernels -O0 / -O2 | workspace -O0 / -O2 "
             "| sum of intermediates | latency -O0 | latency -O2 | -O2 speed-up |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, model, inputs in cases:
        n_aten = aten_ops(model, inputs)
        o0 = ember.compile(model, inputs, opt_level=0)
        o2 = ember.compile(model, inputs, opt_level=2)
        with torch.no_grad():
            want = model(*inputs)
        for cm in (o0, o2):
            err = float((cm(*inputs) - want).abs().max() / want.abs().max())
            assert err < 1e-4, f"{name}: relative error {err}"
        ws0, total = o0.memory_plan.summary({})
        ws2, _ = o2.memory_plan.summary({})
        t = measure({"O0": lambda: o0(*inputs), "O2": lambda: o2(*inputs)}, rounds=args.rounds, max_seconds=60)
        a, b = t["O0"]["median"], t["O2"]["median"]
        mib = lambda n: f"{n / 2**20:.1f} MiB"  # noqa: E731
        lines.append(f"| {name} | {n_aten} | {len(o0.graph.nodes)} / {len(o2.graph.nodes)} | {o0.kernels} / {o2.kernels} "
                     f"| {mib(ws0)} / {mib(ws2)} | {mib(total)} | {fmt_time(a)} | {fmt_time(b)} | {a / b:.2f}x |")
        print(lines[-1], flush=True)
        print("  fusions:", *[str(f) for f in o2.fusions], sep="\n    ")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
