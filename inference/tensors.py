"""Open Inference Protocol tensors to numpy and back: validation and raw byte encoding.

Plain functions over protobuf messages, so they are unit-testable without a server.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mlops_core.errors import InvalidInput
from mlops_core.oip import CONTENTS_FIELD, check_finite
from mlops_core.protocol import open_inference_pb2 as pb
from mlops_core.signature import NUMPY_TO_OIP, TensorSpec


def describe(spec: TensorSpec) -> str:
    dims = ", ".join("N" if d < 0 else str(d) for d in spec.shape)
    return f"{spec.datatype} [{dims}]"


def decode_inputs(
    request: pb.ModelInferRequest, specs: list[TensorSpec]
) -> tuple[dict[str, np.ndarray], int]:
    """The request's input tensors as arrays keyed by name, and the batch's row count.

    Raises InvalidInput naming the input and the expected datatype and shape. Everything
    onnxruntime would refuse about an input (name, datatype, rank, fixed dimensions) is
    checked here, so whatever the session raises afterwards is the model's fault
    (`inference.repository.LoadedVersion.infer`). NaN and infinities are refused, as over REST
    (`mlops_core.oip.check_finite`).
    """
    by_name = {s.name: s for s in specs}
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs"
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        spec = by_name.get(tensor.name)
        if spec is None:
            expected = ", ".join(f"{s.name!r}: {describe(s)}" for s in specs)
            raise InvalidInput(f"unknown input {tensor.name!r}; the model expects {expected}")
        shape = tuple(tensor.shape)
        _check_shape(tensor.name, tensor.datatype, shape, spec)
        dtype = spec.numpy_dtype
        # NOTE: Python ints, not np.prod: numpy's int64 product wraps, and [2**62, 4] would
        # hold 0 values, matching an empty payload. The payload's length (bounded by the
        # message size limit) bounds every shape that passes.
        count = math.prod(shape)
        if raw:
            data = raw[index]
            if len(data) != count * dtype.itemsize:
                raise InvalidInput(
                    f"input {tensor.name!r}: {len(data)} bytes of raw content for shape "
                    f"{list(shape)} of {spec.datatype}; expected {count * dtype.itemsize} bytes "
                    f"(the model expects {describe(spec)})"
                )
            array = np.frombuffer(data, dtype=dtype).reshape(shape)
        else:
            values = getattr(tensor.contents, CONTENTS_FIELD[spec.datatype])
            if len(values) != count:
                raise InvalidInput(
                    f"input {tensor.name!r}: {len(values)} values in contents for shape "
                    f"{list(shape)}; expected {count} (the model expects {describe(spec)})"
                )
            array = np.asarray(values, dtype=dtype).reshape(shape)
        check_finite(tensor.name, spec.datatype, array)
        arrays[tensor.name] = array
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        expected = ", ".join(f"{s.name!r}: {describe(s)}" for s in specs)
        raise InvalidInput(f"missing input(s) {missing}; the model expects {expected}")
    rows = {a.shape[0] for a in arrays.values()}
    if len(rows) != 1:
        raise InvalidInput(f"inputs disagree on the batch size: {sorted(rows)}")
    return arrays, rows.pop()


def _check_shape(name: str, datatype: str, shape: tuple[int, ...], spec: TensorSpec) -> None:
    if datatype != spec.datatype:
        raise InvalidInput(
            f"input {name!r} has datatype {datatype or '(none)'}; "
            f"the model expects {describe(spec)}"
        )
    if len(shape) != len(spec.shape):
        raise InvalidInput(
            f"input {name!r} has shape {list(shape)}; the model expects {describe(spec)}"
        )
    if shape and shape[0] == 0:
        raise InvalidInput(f"input {name!r} is an empty batch; send at least one row")
    for got, want in zip(shape, spec.shape, strict=True):
        if got < 0 or (want >= 0 and got != want):
            raise InvalidInput(
                f"input {name!r} has shape {list(shape)}; the model expects {describe(spec)}"
            )


def requested_output_names(request: pb.ModelInferRequest, specs: list[TensorSpec]) -> list[str]:
    """The outputs to return: those requested, else all of the model's."""
    known = [s.name for s in specs]
    if not request.outputs:
        return known
    names = [o.name for o in request.outputs]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidInput(f"unknown output(s) {unknown}; the model has {known}")
    return names


def encode_response(
    request: pb.ModelInferRequest,
    model_name: str,
    version: str,
    outputs: dict[str, np.ndarray],
    names: list[str],
) -> pb.ModelInferResponse:
    """A response carrying each output as raw little-endian bytes."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=version, id=request.id)
    for name in names:
        array = np.ascontiguousarray(outputs[name])
        tensor = response.outputs.add()
        tensor.name = name
        tensor.datatype = datatype_of(array.dtype)
        tensor.shape.extend(array.shape)
        response.raw_output_contents.append(array.tobytes())
    return response


def datatype_of(dtype: np.dtype[Any]) -> str:
    try:
        return NUMPY_TO_OIP[np.dtype(dtype)]
    except KeyError:
        raise InvalidInput(f"datatype {dtype} has no Open Inference Protocol name") from None
