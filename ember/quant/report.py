"""The quantization report: what Ember did to each layer, how close it stayed to fp32, sizes."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class LayerReport:
    name: str                  # the graph node
    op: str                    # linear | matmul | conv2d
    status: str = "fp32"       # "int8" or "fp32"
    reason: str = ""           # why it stayed / went back to fp32
    activation: str = ""       # "dynamic per row u8", "static u8", ...
    weight_scale: tuple | None = None   # (min, max) of the per-channel scales
    act_scale: float | None = None      # static: the fixed activation scale
    act_zero_point: int | None = None
    cosine: float | None = None         # the layer's output vs fp32 (in the final model)
    sqnr_db: float | None = None
    sensitivity: float | None = None    # 1 - cosine of the model output, this layer alone int8


@dataclass
class QuantReport:
    mode: str
    observer: str | None = None
    layers: list = field(default_factory=list)
    fp32_bytes: int = 0                 # constants (weights) of the fp32 model
    int8_bytes: int = 0                 # constants of the model as compiled
    output_cosine: float | None = None  # mean over the evaluation samples
    output_cosine_min: float | None = None
    budget: float | None = None
    eval_samples: int = 0
    fp32_ms: float | None = None
    int8_ms: float | None = None
    quantized: bool = False             # whether the compiled model runs int8 layers
    notes: list = field(default_factory=list)

    @property
    def int8_layers(self) -> list:
        return [lr for lr in self.layers if lr.status == "int8"]

    @property
    def fp32_layers(self) -> list:
        return [lr for lr in self.layers if lr.status != "int8"]

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"quantization: {self.mode}" + (f" (observer {self.observer})" if self.observer else "")
                 + f", {len(self.int8_layers)}/{len(self.layers)} layers int8"]
        if self.fp32_bytes:
            lines.append(f"weights: fp32 {self.fp32_bytes / 1e6:.2f} MB -> {self.int8_bytes / 1e6:.2f} MB "
                         f"({self.int8_bytes / self.fp32_bytes:.0%})")
        if self.output_cosine is not None:
            lines.append(f"output cosine vs fp32: mean {self.output_cosine:.5f}, min {self.output_cosine_min:.5f} "
                         f"over {self.eval_samples} sample(s)" +
                         (f"; budget {self.budget}" if self.budget is not None else ""))
        if self.fp32_ms is not None and self.int8_ms is not None:
            lines.append(f"speed: fp32 {self.fp32_ms:.3f} ms, int8 {self.int8_ms:.3f} ms "
                         f"({self.fp32_ms / self.int8_ms:.2f}x)")
        hdr = f"{'layer':<28} {'op':<7} {'status':<6} {'w scale (min..max)':<22} {'act scale/zp':<18} " \
              f"{'cos':>8} {'SQNR dB':>8}  note"
        lines += [hdr, "-" * len(hdr)]
        for lr in self.layers:
            ws = f"{lr.weight_scale[0]:.2e}..{lr.weight_scale[1]:.2e}" if lr.weight_scale else ""
            act = (f"{lr.act_scale:.3e}/{lr.act_zero_point}" if lr.act_scale is not None
                   else lr.activation if lr.status == "int8" else "")
            cos = f"{lr.cosine:.5f}" if lr.cosine is not None else ""
            sq = f"{lr.sqnr_db:.1f}" if lr.sqnr_db is not None and np.isfinite(lr.sqnr_db) else ""
            lines.append(f"{lr.name[:28]:<28} {lr.op:<7} {lr.status:<6} {ws:<22} {act[:18]:<18} "
                         f"{cos:>8} {sq:>8}  {lr.reason}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def sqnr_db(ref, q) -> float:
    ref, q = np.asarray(ref, np.float64), np.asarray(q, np.float64)
    noise = float(np.sum((ref - q) ** 2))
    sig = float(np.sum(ref ** 2))
    if noise == 0:
        return float("inf")
    return 10.0 * np.log10(max(sig, 1e-300) / noise)
