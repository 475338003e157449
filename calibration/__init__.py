"""Calibration data and quantization recipes that rewrite ONNX graphs."""
