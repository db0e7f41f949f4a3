"""Ops added for frontends beyond the core set (ONNX and friends); same rules as the rest:
attributes, inference and a numpy reference per op."""
