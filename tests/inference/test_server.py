"""A real `python -m inference` process, called with tritonclient and with our own stubs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks import iris_models
from benchmarks.processes import REPO_ROOT
from mlops_core.oip import infer_request, response_arrays
from mlops_core.protocol import open_inference_pb2 as pb
from mlops_core.protocol import open_inference_pb2_grpc as pb_grpc

X, _ = iris_models.iris()


@pytest.fixture(scope="module")
def server(start_inference, iris_repo: Path):
    # NOTE: iris calls cost ~8 us whatever their rows, below the default threshold for
    # batching; 0 batches them anyway, so the batching tests below see batches form.
    return start_inference(iris_repo, name="standalone", env={"MLOPS_BATCH_MIN_FIXED_US": "0"})


@pytest.fixture
async def stub(server):
    channel = grpc.aio.insecure_channel(server.grpc_address)
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    await channel.close()


def in_process(repo: Path, model: str, version: str, rows: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(repo / model / version / "model.onnx"))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": rows}), strict=True))


def triton(server, **spec) -> dict:
    """tritonclient.grpc, in its own process."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.triton_probe",
            json.dumps({"url": server.grpc_address, **spec}),
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    ("model", "version", "width"), [("iris", "", 4), ("iris", "1", 4), ("petal", "1", 3)]
)
def test_tritonclient_matches_onnxruntime_in_process(server, iris_repo, model, version, width):
    rows = X[::15, :width]
    got = triton(server, model=model, version=version, rows=rows.tolist())
    assert got["live"] and got["ready"] and got["model_ready"]
    served = version or "2"  # standalone: the highest version is active
    assert got["model_version"] == served
    expected = in_process(iris_repo, model, served, rows)
    assert set(got["outputs"]) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(np.asarray(got["outputs"][name], dtype=value.dtype), value)
    meta = got["metadata"]
    assert meta["name"] == model and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", str(width)]}]
    if model == "iris":
        assert meta["versions"] == ["1", "2"]
        assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {
            "label": "INT64",
            "probabilities": "FP32",
        }


def test_tritonclient_sees_errors_with_their_codes(server):
    assert (
        triton(server, model="nope", rows=[[1, 2, 3, 4]])["error"]["status"]
        == "StatusCode.NOT_FOUND"
    )
    assert (
        triton(server, model="iris", version="7", rows=[[1, 2, 3, 4]])["error"]["status"]
        == "StatusCode.NOT_FOUND"
    )
    wrong = triton(server, model="iris", rows=[[1, 2, 3]])["error"]
    assert wrong["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "FP32 [N, 4]" in wrong["message"]


async def test_48_concurrent_clients_each_get_their_own_answer(server, stub, iris_repo):
    rows = [X[i : i + 1] for i in range(0, 144, 3)]
    assert len(rows) == 48
    before = _batches(server)
    # NOTE: a large request goes first so that the 48 arrive while onnxruntime is busy and
    # must queue; without it, on an idle server each may legitimately run alone.
    big = np.resize(X, (100_000, 4))
    in_flight = asyncio.ensure_future(
        stub.ModelInfer(infer_request("iris", {"input": big}, version="2"))
    )
    await asyncio.sleep(0.005)
    responses = await asyncio.gather(
        *(
            stub.ModelInfer(infer_request("iris", {"input": r}, version="2", request_id=str(i)))
            for i, r in enumerate(rows)
        )
    )
    await in_flight
    expected = in_process(iris_repo, "iris", "2", np.concatenate(rows))
    for i, response in enumerate(responses):
        assert response.id == str(i) and response.model_version == "2"
        out = response_arrays(response)
        np.testing.assert_array_equal(out["label"], expected["label"][i : i + 1])
        np.testing.assert_array_equal(out["probabilities"], expected["probabilities"][i : i + 1])
    runs, batched_rows = (a - b for a, b in zip(_batches(server), before, strict=True))
    assert batched_rows == 48 + 100_000
    assert runs - 1 < 48, "concurrent requests were batched into fewer onnxruntime calls"


def _batches(server) -> tuple[float, float]:
    """(onnxruntime calls, rows) for iris version 2, from the replica's /metrics."""
    text = httpx.get(f"{server.http_url}/metrics").text
    values = {}
    for line in text.splitlines():
        if line.startswith("mlops_inference_batch_rows_") and 'model="iris",version="2"' in line:
            key = line.split("{")[0].rsplit("_", 1)[1]
            values[key] = float(line.rsplit(" ", 1)[1])
    return values.get("count", 0.0), values.get("sum", 0.0)


async def test_typed_contents_equal_raw_contents(stub):
    rows = X[:3]
    request = pb.ModelInferRequest(model_name="iris")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[3, 4])
    tensor.contents.fp32_contents.extend(rows.ravel().tolist())
    typed = response_arrays(await stub.ModelInfer(request))
    raw = response_arrays(await stub.ModelInfer(infer_request("iris", {"input": rows})))
    for name in raw:
        np.testing.assert_array_equal(typed[name], raw[name])


@pytest.mark.parametrize(
    ("request_factory", "code", "message"),
    [
        (lambda: infer_request("nope", {"input": X[:1]}), grpc.StatusCode.NOT_FOUND, "not served"),
        (
            lambda: infer_request("iris", {"input": X[:1]}, version="9"),
            grpc.StatusCode.NOT_FOUND,
            "no version '9'",
        ),
        (
            lambda: infer_request("iris", {"input": X[:1].astype(np.float64)}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "datatype FP64",
        ),
        (
            lambda: infer_request("iris", {"input": X[:2, :3]}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "FP32 [N, 4]",
        ),
        (
            lambda: infer_request("iris", {"input": X[:0]}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "empty batch",
        ),
        (
            lambda: infer_request("iris", {"input": X[:1]}, outputs=["nope"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown output",
        ),
    ],
)
async def test_errors_have_the_right_status(stub, request_factory, code, message):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ModelInfer(request_factory())
    assert caught.value.code() == code
    assert message in caught.value.details()


async def test_byte_length_mismatch_is_invalid_argument(stub):
    request = infer_request("iris", {"input": X[:2]})
    request.raw_input_contents[0] = request.raw_input_contents[0][:-1]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected 32 bytes" in caught.value.details()


async def test_default_message_limit_is_above_grpc_4mib(stub):
    rows = np.resize(X, (400_000, 4))  # 6.4 MB of float32
    response = await stub.ModelInfer(infer_request("petal", {"input": rows[:, :3]}), timeout=60)
    assert response_arrays(response)["variable"].shape == (400_000, 1)


async def test_message_over_the_limit_is_resource_exhausted(start_inference, iris_repo):
    small = start_inference(
        iris_repo, name="small-limit", env={"MLOPS_MAX_MESSAGE_BYTES": "1048576"}
    )
    async with grpc.aio.insecure_channel(small.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        rows = np.resize(X, (100_000, 4))  # 1.6 MB
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ModelInfer(infer_request("iris", {"input": rows}))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_health_metadata_and_metrics(server, stub):
    async with grpc.aio.insecure_channel(server.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert (await stub.ServerLive(pb.ServerLiveRequest())).live
    assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="iris", version="1"))).ready
    assert not (await stub.ModelReady(pb.ModelReadyRequest(name="iris", version="5"))).ready
    meta = await stub.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "mlops-inference"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    health_body = httpx.get(f"{server.http_url}/health").json()
    assert health_body["status"] == "ok" and health_body["models"]["iris"]["active"] == "2"
    metrics = httpx.get(f"{server.http_url}/metrics").text
    for series in (
        'mlops_inference_requests_total{model="iris",version="2"}',
        'mlops_inference_failures_total{code="INVALID_ARGUMENT",model="iris",version="2"}',
        "mlops_inference_request_duration_seconds_bucket",
        "mlops_inference_queue_duration_seconds_bucket",
        "mlops_inference_batch_rows_bucket",
    ):
        assert series in metrics, series
