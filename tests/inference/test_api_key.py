"""Native gRPC with `MLOPS_API_KEY` set: a real replica refuses inference and metadata calls
without `authorization: Bearer <key>` (tritonclient's `headers=`), and keeps health open."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks import iris_models
from benchmarks.processes import REPO_ROOT
from inference.api_key import OPEN_METHODS, ApiKeyCheck
from mlops_core.oip import infer_request
from mlops_core.protocol import open_inference_pb2 as pb
from mlops_core.protocol import open_inference_pb2_grpc as pb_grpc

X, _ = iris_models.iris()
KEY = "replica-test-api-key-5b1f"
BEARER = {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(start_inference, iris_repo: Path):
    return start_inference(iris_repo, name="keyed", env={"MLOPS_API_KEY": KEY})


@pytest.fixture
async def stub(server):
    async with grpc.aio.insecure_channel(server.grpc_address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def triton(server, **spec) -> dict:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.triton_probe",
            json.dumps({"url": server.grpc_address, "model": "iris", **spec}),
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)


def test_tritonclient_without_the_key_is_refused_on_metadata_and_infer(server):
    rows = X[:2].tolist()
    no_key = triton(server, rows=rows)
    assert no_key["live"] and no_key["ready"] and no_key["model_ready"], "health stays open"
    assert no_key["error"]["status"] == "StatusCode.UNAUTHENTICATED"
    assert "authorization: Bearer <MLOPS_API_KEY>" in no_key["error"]["message"]
    assert "metadata" not in no_key
    infer_only = triton(server, rows=rows, metadata=False)
    assert infer_only["error"]["status"] == "StatusCode.UNAUTHENTICATED"
    assert "outputs" not in infer_only
    wrong = triton(server, rows=rows, headers={"authorization": "Bearer not-the-key"})
    assert wrong["error"]["status"] == "StatusCode.UNAUTHENTICATED"


def test_tritonclient_with_the_key_is_served(server):
    got = triton(server, rows=X[:2].tolist(), headers=BEARER)
    assert "error" not in got, got
    assert got["metadata"]["name"] == "iris"
    assert got["model_version"] == "2" and len(got["outputs"]["label"]) == 2


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        (("authorization", KEY),),  # no scheme
        (("authorization", f"Basic {KEY}"),),
        (("authorization", f"Bearer {KEY}x"),),
        (("authorization", f"Bearer {KEY[:-1]}"),),
        (("x-api-key", KEY),),
    ],
)
async def test_every_protected_rpc_refuses_a_missing_or_wrong_key(stub, metadata):
    calls = [
        stub.ModelInfer(infer_request("iris", {"input": X[:1]}), metadata=metadata),
        stub.ModelMetadata(pb.ModelMetadataRequest(name="iris"), metadata=metadata),
        stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=metadata),
        # An unknown model gets UNAUTHENTICATED too: without the key, nothing is revealed.
        stub.ModelMetadata(pb.ModelMetadataRequest(name="ghost"), metadata=metadata),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert KEY not in (caught.value.details() or "")


async def test_protected_rpcs_answer_with_the_key(stub):
    meta = (("authorization", f"Bearer {KEY}"),)
    response = await stub.ModelInfer(infer_request("iris", {"input": X[:1]}), metadata=meta)
    assert response.model_version == "2"
    server_meta = await stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=meta)
    assert server_meta.name == "mlops-inference"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ModelMetadata(pb.ModelMetadataRequest(name="ghost"), metadata=meta)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_rpcs_stay_open(server, stub):
    assert (await stub.ServerLive(pb.ServerLiveRequest())).live
    assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="iris"))).ready
    async with grpc.aio.insecure_channel(server.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_open_methods_are_exactly_the_health_ones():
    service = "/inference.GRPCInferenceService/"
    assert {m for m in OPEN_METHODS if m.startswith(service)} == {
        service + "ServerLive",
        service + "ServerReady",
        service + "ModelReady",
    }
    assert "/grpc.health.v1.Health/Check" in OPEN_METHODS
    assert "/grpc.health.v1.Health/Watch" in OPEN_METHODS
    assert service + "ModelInfer" not in OPEN_METHODS


@pytest.mark.parametrize("key", ["", "clé", "line\nbreak"])
def test_a_key_that_cannot_travel_in_metadata_is_refused_at_start(key):
    with pytest.raises(ValueError, match="printable ASCII"):
        ApiKeyCheck(key)
