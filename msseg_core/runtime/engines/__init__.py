"""The engines a Segmenter runs its network on: PyTorch, ONNX Runtime, OpenVINO, TensorRT."""
