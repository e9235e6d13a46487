"""Exports of the networks to ONNX (checked with onnxruntime) and TensorRT."""
