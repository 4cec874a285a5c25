"""Decoding and validating Open Inference Protocol tensors, without a server."""

from __future__ import annotations

import numpy as np
import pytest

from inference import tensors
from mlops_core.errors import InvalidInput
from mlops_core.oip import infer_request, response_arrays
from mlops_core.protocol import open_inference_pb2 as pb
from mlops_core.signature import TensorSpec

SPECS = [TensorSpec("input", "FP32", [-1, 4])]


def typed_request(datatype: str, field: str, values: list[float], shape: list[int]):
    request = pb.ModelInferRequest(model_name="iris")
    tensor = request.inputs.add(name="input", datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return request


def test_raw_contents_round_trip() -> None:
    rows = np.arange(8, dtype=np.float32).reshape(2, 4)
    arrays, n = tensors.decode_inputs(infer_request("iris", {"input": rows}), SPECS)
    assert n == 2
    np.testing.assert_array_equal(arrays["input"], rows)


@pytest.mark.parametrize(
    ("datatype", "field", "dtype"),
    [
        ("FP32", "fp32_contents", np.float32),
        ("FP64", "fp64_contents", np.float64),
        ("INT64", "int64_contents", np.int64),
        ("INT32", "int_contents", np.int32),
    ],
)
def test_typed_contents(datatype: str, field: str, dtype: type) -> None:
    specs = [TensorSpec("input", datatype, [-1, 2])]
    request = typed_request(datatype, field, [1, 2, 3, 4], [2, 2])
    arrays, n = tensors.decode_inputs(request, specs)
    assert n == 2 and arrays["input"].dtype == dtype
    np.testing.assert_array_equal(arrays["input"], np.array([[1, 2], [3, 4]], dtype=dtype))


@pytest.mark.parametrize(
    ("request_factory", "message"),
    [
        (lambda: typed_request("FP64", "fp64_contents", [1.0] * 4, [1, 4]), "datatype FP64"),
        (lambda: typed_request("FP32", "fp32_contents", [1.0] * 3, [1, 3]), "shape [1, 3]"),
        (lambda: typed_request("FP32", "fp32_contents", [1.0] * 4, [4]), "shape [4]"),
        (lambda: typed_request("FP32", "fp32_contents", [], [0, 4]), "empty batch"),
        (lambda: typed_request("FP32", "fp32_contents", [1.0] * 5, [1, 4]), "5 values"),
        (lambda: typed_request("FP32", "fp32_contents", [1.0] * 4, [1, -4]), "shape [1, -4]"),
        (
            lambda: typed_request("FP32", "fp32_contents", [], [2**62, 4]),
            "0 values in contents for shape [4611686018427387904, 4]; "
            "expected 18446744073709551616 (the model expects FP32 [N, 4])",
        ),
        (
            lambda: typed_request("FP32", "fp32_contents", [1, 2, 3, float("nan")], [1, 4]),
            "input 'input' row 0 holds nan",
        ),
    ],
)
def test_invalid_inputs_name_the_input_and_expected_shape(request_factory, message) -> None:
    with pytest.raises(InvalidInput) as caught:
        tensors.decode_inputs(request_factory(), SPECS)
    assert message in caught.value.message
    assert "input" in caught.value.message


def test_raw_byte_length_mismatch() -> None:
    request = infer_request("iris", {"input": np.zeros((2, 4), np.float32)})
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    with pytest.raises(InvalidInput, match=r"28 bytes .* expected 32 bytes"):
        tensors.decode_inputs(request, SPECS)


def test_unknown_and_missing_inputs() -> None:
    request = infer_request("iris", {"features": np.zeros((1, 4), np.float32)})
    with pytest.raises(InvalidInput, match=r"unknown input 'features'.*'input': FP32 \[N, 4\]"):
        tensors.decode_inputs(request, SPECS)
    with pytest.raises(InvalidInput, match="missing input"):
        tensors.decode_inputs(pb.ModelInferRequest(model_name="iris"), SPECS)


def test_requested_outputs_and_encoding() -> None:
    specs = [TensorSpec("label", "INT64", [-1]), TensorSpec("probabilities", "FP32", [-1, 3])]
    request = infer_request("iris", {}, outputs=["probabilities"])
    names = tensors.requested_output_names(request, specs)
    assert names == ["probabilities"]
    outputs = {"label": np.array([1]), "probabilities": np.array([[0.1, 0.8, 0.1]], np.float32)}
    response = tensors.encode_response(request, "iris", "2", outputs, names)
    assert response.model_version == "2"
    decoded = response_arrays(response)
    assert list(decoded) == ["probabilities"]
    np.testing.assert_array_equal(decoded["probabilities"], outputs["probabilities"])
    with pytest.raises(InvalidInput, match="unknown output"):
        tensors.requested_output_names(infer_request("iris", {}, outputs=["nope"]), specs)
