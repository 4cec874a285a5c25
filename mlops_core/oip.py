"""Client side of the Open Inference Protocol: numpy arrays to a ModelInferRequest with raw
tensor bytes, and a ModelInferResponse back to arrays. Used by the gateway, the benchmarks
and the tests; the server's side is `inference.tensors`. Both sides refuse non-finite values
with `check_finite`."""

from __future__ import annotations

import numpy as np

from mlops_core.errors import InvalidInput
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


def check_finite(name: str, datatype: str, array: np.ndarray) -> None:
    """Refuse a float tensor holding NaN or an infinity: InvalidInput naming the input, the
    first row that holds one, and what the model takes.

    NOTE: REST cannot carry NaN or infinities (JSON has neither, and a number past the
    datatype's range becomes an infinity when packed), so the gateway refuses them and the
    replicas refuse them over gRPC too: one input, one answer on both transports, and no model
    runs on values its converter never promised to handle. One vectorised pass (about 2 us for
    a small request) on the error-free path.
    """
    if array.dtype.kind != "f" or np.isfinite(array).all():
        return
    where = np.argwhere(~np.isfinite(array))[0]
    value = array[tuple(where)]
    row = f" row {where[0]}" if array.ndim > 1 else ""
    raise InvalidInput(
        f"input {name!r}{row} holds {value}: the model takes finite {datatype} numbers "
        f"(NaN, infinities and numbers out of range for {datatype} are refused)"
    )
