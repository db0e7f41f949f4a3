"""Quantization ops (int8 / uint8 tensors with scales and zero points); see ember/quant/."""
