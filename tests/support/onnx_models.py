"""Hand-built ONNX models for error tests: graphs that load and warm up, then fail at run time."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from mlops_core.signature import MODEL_FILE

OPSET = 17


def gather_out_of_range() -> onnx.ModelProto:
    """FP32 [N, 4] in, FP32 [N, 4] out: each value, cast to an index, looks up a table of one
    entry. Zeros (what a warm-up sends) run; any value of 1 or more makes the Gather node fail
    with onnxruntime's INVALID_ARGUMENT, a fault of the model however it is labelled."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input"], ["index"], to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "index"], ["variable"], axis=0),
        ],
        "gather_out_of_range",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor("table", TensorProto.FLOAT, [1], [1.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_model(root: Path, name: str, version: str, model: onnx.ModelProto) -> Path:
    """`<root>/<name>/<version>/model.onnx`: the graph is the whole signature."""
    directory = root / name / version
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MODEL_FILE).write_bytes(model.SerializeToString())
    return directory
