"""TensorRT engines built from the exported ONNX graphs."""
