"""Open Inference Protocol (KServe v2) REST bodies, with Triton's binary tensor data extension:
an infer request's bytes to tensors, and the fleet's outputs back to bytes.

Plain functions over bytes and arrays (no FastAPI, no pydantic), so the hot path stays short
and each rule is testable without a server. Every refusal is InvalidInput (400 on `/v2`) naming
the input and what was wrong.

The binary extension: the body is a JSON header of `Inference-Header-Content-Length` bytes,
then each input with `"parameters": {"binary_data_size": N}` as N raw little-endian bytes, in
the order of `inputs`. BYTES elements are each a 4-byte little-endian length and the bytes.
Outputs asked for with `"binary_data": true` (or, for outputs not named, the request's
`"binary_data_output": true`) come back the same way, with `binary_data_size` in their
`parameters`.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from gateway.errors import preview
from mlops_core.errors import InvalidInput, MessageTooLarge
from mlops_core.signature import NUMPY_TO_OIP, OIP_TO_NUMPY

HEADER_LENGTH = "Inference-Header-Content-Length"
BYTES = "BYTES"
DATATYPES = (*OIP_TO_NUMPY, BYTES)
_LENGTH = struct.Struct("<I")

# Which JSON values each datatype takes: numpy's kind of the array `np.array(data)` builds.
_KINDS = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers"}
_ACCEPTED_KINDS = {
    **{name: "iuf" for name, dtype in OIP_TO_NUMPY.items() if dtype.kind == "f"},
    **{name: "iu" for name, dtype in OIP_TO_NUMPY.items() if dtype.kind in "iu"},
    "BOOL": "b",
}
# Triton parameters for features this gateway does not offer: refused rather than ignored, so
# a client never reads an answer computed without what it asked for.
_UNSUPPORTED = ("shared_memory_region", "classification")
CONTENT_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


@dataclass(frozen=True)
class InputTensor:
    """One input as the fleet takes it: numeric tensors as an array, BYTES as raw bytes
    (length-prefixed elements, the OIP raw layout)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray | None = None
    raw: bytes = b""

    def raw_contents(self) -> bytes:
        return self.array.tobytes() if self.array is not None else self.raw


@dataclass(frozen=True)
class InferRequest:
    id: str
    inputs: list[InputTensor]
    outputs: list[str] = field(default_factory=list)
    """Output names asked for; empty: every output of the model."""
    binary: dict[str, bool] = field(default_factory=dict)
    """Per named output: whether it goes back as binary data."""
    binary_default: bool = False
    """For outputs not named: the request's `binary_data_output`."""

    def is_binary(self, output: str) -> bool:
        return self.binary.get(output, self.binary_default)


def decoded_body(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """The body, inflated when it was sent with `Content-Encoding: gzip` or `deflate` (what
    tritonclient sends with `request_compression_algorithm`), and never past `max_bytes`."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    wbits = CONTENT_ENCODINGS.get(encoding)
    if wbits is None:
        raise InvalidInput(
            f"Content-Encoding {preview(encoding)} is not supported; send the body as is, "
            "or with gzip or deflate"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        # NOTE: bounded, so a small compressed body cannot expand past the body limit.
        inflated = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise InvalidInput(f"body is not valid {encoding} data: {exc}") from None
    if len(inflated) > max_bytes or inflater.unconsumed_tail:
        raise MessageTooLarge(f"request body exceeds {max_bytes} bytes once inflated")
    return inflated


def decode_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """The request's tensors, checked for everything that can be told without the model:
    JSON, datatypes, shapes against value counts and binary sizes."""
    header, binary = _split(body, header_length)
    try:
        payload = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidInput('body must be a JSON object like {"inputs": [...]}')
    request_id = payload.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput(f"id must be a string, not {preview(request_id)}")
    parameters = _parameters(payload, "the request")
    binary_default = _flag(parameters, "binary_data_output", "the request")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput(
            "inputs must be a non-empty list of tensors (name, shape, datatype, data)"
        )
    tensors: list[InputTensor] = []
    offset = 0
    for index, item in enumerate(inputs):
        tensor, offset = _input(item, index, binary, offset)
        tensors.append(tensor)
    if offset != len(binary):
        raise InvalidInput(
            f"body holds {len(binary) - offset} bytes of binary data past the inputs' "
            "binary_data_size"
        )
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise InvalidInput(f"inputs repeat a name: {preview(names)}")
    outputs, binary_by_name = _outputs(payload.get("outputs"), binary_default)
    return InferRequest(request_id, tensors, outputs, binary_by_name, binary_default)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    text = header_length.strip()
    if not text.isdigit() or int(text) > len(body):
        raise InvalidInput(
            f"{HEADER_LENGTH} is {preview(header_length)}: it must be the length of the JSON "
            f"header, at most the body's {len(body)} bytes"
        )
    length = int(text)
    return body[:length], memoryview(body)[length:]


def _parameters(item: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = item.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput(f"parameters of {where} must be an object")
    for name in _UNSUPPORTED:
        if name in parameters:
            raise InvalidInput(f"parameter {name!r} of {where} is not supported by this server")
    return parameters


def _flag(parameters: dict[str, Any], name: str, where: str, default: bool = False) -> bool:
    value = parameters.get(name, default)
    if type(value) is not bool:
        raise InvalidInput(f"parameter {name!r} of {where} must be true or false")
    return value


def _input(item: Any, index: int, binary: memoryview, offset: int) -> tuple[InputTensor, int]:
    if not isinstance(item, dict):
        raise InvalidInput(f"inputs[{index}] must be an object with name, shape, datatype, data")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"inputs[{index}] has no name")
    datatype = item.get("datatype")
    if datatype not in DATATYPES:
        raise InvalidInput(
            f"input {name!r} has datatype {preview(datatype)}; the datatypes are "
            f"{', '.join(DATATYPES)}"
        )
    shape = item.get("shape")
    # NOTE: type() rather than isinstance() so booleans (an int subclass) are refused.
    if not isinstance(shape, list) or any(type(d) is not int or d < 0 for d in shape):
        raise InvalidInput(
            f"input {name!r} has shape {preview(shape)}; a shape is a list of sizes (0 or more)"
        )
    where = f"input {name!r}"
    size = _parameters(item, where).get("binary_data_size")
    if size is None:
        if "data" not in item:
            raise InvalidInput(f"{where} has neither data nor parameters.binary_data_size")
        return _from_json(name, datatype, tuple(shape), item["data"]), offset
    if type(size) is not int or size < 0:
        raise InvalidInput(f"binary_data_size of {where} must be a number of bytes")
    if "data" in item:
        raise InvalidInput(f"{where} has both data and binary_data_size: send one")
    chunk = binary[offset : offset + size]
    if len(chunk) != size:
        raise InvalidInput(
            f"{where}: binary_data_size is {size}, but the body holds only {len(chunk)} bytes of "
            "binary data from there"
        )
    return _from_binary(name, datatype, tuple(shape), chunk), offset + size


def _from_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> InputTensor:
    count = math.prod(shape)
    if datatype == BYTES:
        elements = _flatten_strings(name, data)
        _check_count(name, len(elements), shape, count)
        raw = b"".join(_LENGTH.pack(len(e)) + e for e in elements)
        return InputTensor(name, datatype, shape, raw=raw)
    try:
        found = np.array(data)
    except (ValueError, TypeError):  # ragged lists
        raise InvalidInput(
            f"input {name!r}: data must be a list of values (flat, or nested to one shape)"
        ) from None
    accepted = _ACCEPTED_KINDS[datatype]
    if found.size and found.dtype.kind not in accepted:
        raise InvalidInput(
            f"input {name!r} holds {_what(found)}; {datatype} takes {_KINDS[accepted[-1]]}"
        )
    _check_count(name, found.size, shape, count)
    dtype = OIP_TO_NUMPY[datatype]
    if dtype.kind in "iu" and found.size:
        limits = np.iinfo(dtype)
        if found.min() < limits.min or found.max() > limits.max:
            raise InvalidInput(
                f"input {name!r} holds integers outside {datatype}'s range "
                f"[{limits.min}, {limits.max}]"
            )
    # NOTE: a number past FP32's range becomes an infinity here, which the fleet refuses with
    # the message it gives over gRPC (`mlops_core.oip.check_finite`).
    with np.errstate(over="ignore"):
        return InputTensor(name, datatype, shape, array=found.astype(dtype).reshape(shape))


def _what(found: np.ndarray) -> str:
    if found.dtype.kind == "f":
        return "floating-point numbers"
    kind = _KINDS.get(found.dtype.kind)
    return kind if kind else "values that are not numbers (strings, null, or lists mixed with them)"


def _check_count(name: str, found: int, shape: tuple[int, ...], count: int) -> None:
    if found != count:
        raise InvalidInput(
            f"input {name!r}: {found} values in data for shape {list(shape)}; expected {count}"
        )


def _flatten_strings(name: str, data: Any) -> list[bytes]:
    out: list[bytes] = []
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(reversed(value))
        elif isinstance(value, str):
            out.append(value.encode())
        else:
            raise InvalidInput(f"input {name!r} is BYTES: its data must be strings")
    return out


def _from_binary(
    name: str, datatype: str, shape: tuple[int, ...], chunk: memoryview
) -> InputTensor:
    count = math.prod(shape)
    if datatype == BYTES:
        found = _count_elements(name, chunk)
        if found != count:
            raise InvalidInput(
                f"input {name!r}: {found} BYTES elements in its binary data for shape "
                f"{list(shape)}; expected {count}"
            )
        return InputTensor(name, datatype, shape, raw=bytes(chunk))
    dtype = OIP_TO_NUMPY[datatype]
    if len(chunk) != count * dtype.itemsize:
        raise InvalidInput(
            f"input {name!r}: binary_data_size is {len(chunk)} bytes for shape {list(shape)} of "
            f"{datatype}; expected {count * dtype.itemsize}"
        )
    return InputTensor(name, datatype, shape, array=np.frombuffer(chunk, dtype).reshape(shape))


def _count_elements(name: str, chunk: memoryview) -> int:
    """How many length-prefixed elements fill `chunk` exactly."""
    offset = found = 0
    while offset < len(chunk):
        if offset + _LENGTH.size > len(chunk):
            raise InvalidInput(f"input {name!r}: BYTES data ends inside an element's length")
        (length,) = _LENGTH.unpack_from(chunk, offset)
        offset += _LENGTH.size + length
        if offset > len(chunk):
            raise InvalidInput(f"input {name!r}: a BYTES element runs past its binary data")
        found += 1
    return found


def _outputs(raw: Any, binary_default: bool) -> tuple[list[str], dict[str, bool]]:
    if raw is None:
        return [], {}
    if not isinstance(raw, list):
        raise InvalidInput("outputs must be a list of objects with a name")
    names: list[str] = []
    binary: dict[str, bool] = {}
    for index, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"outputs[{index}] must be an object with a name")
        where = f"output {name!r}"
        binary[name] = _flag(_parameters(item, where), "binary_data", where, binary_default)
        names.append(name)
    return names, binary


def encode_infer_response(
    model: str,
    version: str,
    request: InferRequest,
    outputs: dict[str, np.ndarray],
) -> tuple[bytes, int | None]:
    """The response body, and the length of its JSON header when binary outputs follow it."""
    described: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in outputs.items():
        entry: dict[str, Any] = {
            "name": name,
            "datatype": NUMPY_TO_OIP[array.dtype],
            "shape": list(array.shape),
        }
        if request.is_binary(name):
            raw = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            # NOTE: orjson writes a contiguous array itself, each float32 in its shortest form.
            entry["data"] = np.ascontiguousarray(array).reshape(-1)
        described.append(entry)
    body: dict[str, Any] = {"model_name": model, "model_version": version}
    if request.id:
        body["id"] = request.id
    body["outputs"] = described
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
