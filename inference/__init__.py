"""The inference server: Open Inference Protocol v2 over gRPC on an ONNX model repository."""
