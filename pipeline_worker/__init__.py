"""The pipeline worker: arq jobs that turn a pushed notebook into a served ONNX model."""
