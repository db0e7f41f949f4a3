"""Lowerings for the quantization ops in ember/ir/ops/quant.py, registered into ``rules.RULES``."""
