"""Export side (PyTorch): the reference model of Covo-Audio-Chat and its ONNX export."""
