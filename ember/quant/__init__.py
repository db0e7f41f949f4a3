"""INT8 quantization: observers, calibration, the rewrite to int8 ops, the accuracy report."""
