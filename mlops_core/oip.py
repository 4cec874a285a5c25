"""Client side of the Open Inference Protocol: numpy arrays to a ModelInferRequest with raw
tensor bytes, and a ModelInferResponse back to arrays. Used by the gateway, the benchmarks
and the tests; the server's side is `inference.tensors`."""

from __future__ import annotations

import numpy as np

from mlops_core.protocol import open_inference_pb2 as pb
from mlops_core.signature import NUMPY_TO_OIP, OIP_TO_NUMPY

# Which `InferTensorContents` field carries each datatype when values are sent typed.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def infer_request(
    model: str,
    inputs: dict[str, np.ndarray],
    version: str = "",
    request_id: str = "",
    outputs: list[str] | None = None,
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, array in inputs.items():
        array = np.ascontiguousarray(array)
        tensor = request.inputs.add()
        tensor.name = name
        tensor.datatype = NUMPY_TO_OIP[array.dtype]
        tensor.shape.extend(array.shape)
        request.raw_input_contents.append(array.tobytes())
    for name in outputs or []:
        request.outputs.add(name=name)
    return request


def response_arrays(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Each output as an array (raw bytes when the server sent them, typed contents otherwise)."""
    arrays: dict[str, np.ndarray] = {}
    raw = response.raw_output_contents
    for index, tensor in enumerate(response.outputs):
        dtype = OIP_TO_NUMPY[tensor.datatype]
        shape = tuple(tensor.shape)
        if raw:
            arrays[tensor.name] = np.frombuffer(raw[index], dtype=dtype).reshape(shape)
        else:
            values = getattr(tensor.contents, CONTENTS_FIELD[tensor.datatype])
            arrays[tensor.name] = np.asarray(values, dtype=dtype).reshape(shape)
    return arrays
