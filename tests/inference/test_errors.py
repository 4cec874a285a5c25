"""Errors over native gRPC on a real replica: each class answers its own code, a model that
fails while running is INTERNAL and says so, an overflowing shape and NaN or infinities are
INVALID_ARGUMENT naming the input and what the model expects."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from benchmarks import iris_models
from inference.grpc_status import as_mlops_error
from mlops_core.errors import InternalError, InvalidInput, MlopsError, ModelNotFound
from mlops_core.errors import ModelRuntimeError as RuntimeFailure
from mlops_core.oip import infer_request, response_arrays
from mlops_core.protocol import open_inference_pb2 as pb
from mlops_core.protocol import open_inference_pb2_grpc as pb_grpc
from tests.conftest import InferenceServer, StartInference

X, _ = iris_models.iris()
ZEROS = np.zeros((2, 4), np.float32)
FIVES = np.full((1, 4), 5, np.float32)  # past `broken`'s one-entry table


@pytest.fixture(scope="module")
def server(start_inference: StartInference, error_repo: Path) -> InferenceServer:
    # NOTE: 0 batches every model, however cheap its calls, so concurrent requests share them.
    return start_inference(error_repo, name="errors", env={"MLOPS_BATCH_MIN_FIXED_US": "0"})


@pytest.fixture
async def stub(server: InferenceServer) -> AsyncIterator[pb_grpc.GRPCInferenceServiceStub]:
    async with grpc.aio.insecure_channel(server.grpc_address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


async def refusal(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def typed_request(model: str, shape: list[int], values: list[float]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=shape)
    tensor.contents.fp32_contents.extend(values)
    return request


def raw_request(model: str, shape: list[int], payload: bytes) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=shape)
    request.raw_input_contents.append(payload)
    return request


Call = Callable[[pb_grpc.GRPCInferenceServiceStub], Awaitable[object]]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s: s.ModelInfer(infer_request("nope", {"input": ZEROS})), ModelNotFound),
        (lambda s: s.ModelMetadata(pb.ModelMetadataRequest(name="nope")), ModelNotFound),
        (lambda s: s.ModelInfer(infer_request("broken", {"input": ZEROS[:, :3]})), InvalidInput),
        (lambda s: s.ModelInfer(infer_request("broken", {"input": FIVES})), RuntimeFailure),
    ],
    ids=["infer-not-found", "metadata-not-found", "invalid-input", "model-runtime-error"],
)
async def test_each_error_answers_its_class_grpc_code(
    stub: pb_grpc.GRPCInferenceServiceStub, call: Call, error: type[MlopsError]
):
    caught = await refusal(call(stub))
    assert caught.code() == error.grpc_code


async def test_a_model_failing_while_running_is_internal_and_says_so(
    stub: pb_grpc.GRPCInferenceServiceStub, server: InferenceServer
):
    answer = response_arrays(await stub.ModelInfer(infer_request("broken", {"input": ZEROS})))
    np.testing.assert_array_equal(answer["variable"], np.ones((2, 4), np.float32))
    caught = await refusal(stub.ModelInfer(infer_request("broken", {"input": FIVES})))
    assert caught.code() == grpc.StatusCode.INTERNAL
    details = caught.details() or ""
    assert details.startswith("model 'broken' version '1' failed while running: "), details
    assert "Gather" in details and "Traceback" not in details
    metrics = httpx.get(f"{server.http_url}/metrics").text
    assert 'mlops_inference_failures_total{code="INTERNAL",model="broken",version="1"}' in metrics


async def test_only_the_request_that_breaks_a_shared_call_fails(
    stub: pb_grpc.GRPCInferenceServiceStub,
):
    requests = [infer_request("broken", {"input": ZEROS[:1]}, request_id=str(i)) for i in range(24)]
    requests[11] = infer_request("broken", {"input": FIVES}, request_id="11")
    results = await asyncio.gather(*(stub.ModelInfer(r) for r in requests), return_exceptions=True)
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == [11]
    bad = results[11]
    assert isinstance(bad, grpc.aio.AioRpcError) and bad.code() == grpc.StatusCode.INTERNAL
    for i, result in enumerate(results):
        if i != 11:
            assert isinstance(result, pb.ModelInferResponse) and result.id == str(i)


@pytest.mark.parametrize(
    "request_factory",
    [
        lambda: raw_request("broken", [2**62, 4], b""),
        lambda: typed_request("broken", [2**62, 4], []),
        # numpy's int64 product wraps to 4 values: these 16 bytes would have matched.
        lambda: raw_request("broken", [2**62 + 1, 4], bytes(16)),
    ],
    ids=["raw", "typed", "wrapping-to-the-payload"],
)
async def test_an_overflowing_shape_is_invalid_argument_naming_the_input(
    stub: pb_grpc.GRPCInferenceServiceStub, request_factory: Callable[[], pb.ModelInferRequest]
):
    request = request_factory()
    caught = await refusal(stub.ModelInfer(request))
    assert caught.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.details() or ""
    assert details.startswith("input 'input'"), details
    assert str(list(request.inputs[0].shape)) in details
    assert "the model expects FP32 [N, 4]" in details


@pytest.mark.parametrize("shape", [[-1, 4], [1, -4], [3, 2**62], [0, 4]])
async def test_negative_wrong_and_empty_dimensions_are_invalid_argument(
    stub: pb_grpc.GRPCInferenceServiceStub, shape: list[int]
):
    caught = await refusal(stub.ModelInfer(raw_request("broken", shape, b"")))
    assert caught.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.details() or ""
    assert details.startswith("input 'input'"), details
    if shape[0] != 0:
        assert f"has shape {shape}; the model expects FP32 [N, 4]" in details


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
async def test_nan_and_infinities_are_invalid_argument_naming_input_and_row(
    stub: pb_grpc.GRPCInferenceServiceStub, value: float, typed: bool
):
    rows = X[:3, :3].copy()  # `shifting` 2: a linear regressor that would run on them
    rows[2, 1] = value
    if typed:
        request = typed_request("shifting", [3, 3], rows.ravel().tolist())
    else:
        request = infer_request("shifting", {"input": rows})
    caught = await refusal(stub.ModelInfer(request))
    assert caught.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.details() == (
        f"input 'input' row 2 holds {np.float32(value)}: the model takes finite FP32 numbers "
        "(NaN, infinities and numbers out of range for FP32 are refused)"
    )


def test_an_unexpected_exception_becomes_an_internal_error_without_its_text():
    error = as_mlops_error(KeyError("secret detail"), "ModelInfer")
    assert isinstance(error, InternalError) and error.grpc_code == grpc.StatusCode.INTERNAL
    assert "server fault" in error.message and "secret detail" not in error.message
    ours = InvalidInput("bad")
    assert as_mlops_error(ours, "ModelInfer") is ours
