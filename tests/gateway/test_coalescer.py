"""The gateway's request coalescer against a real inference replica."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from benchmarks import iris_models
from gateway.coalescer import RequestCoalescer
from mlops_core.oip import infer_request
from mlops_core.protocol import open_inference_pb2_grpc as pb_grpc

X, _ = iris_models.iris()


@pytest.fixture(scope="module")
def replica(start_inference, iris_repo: Path):
    return start_inference(iris_repo, name="coalescer-replica")


class CountingSender:
    """Sends ModelInfer to the real replica and counts the calls."""

    def __init__(self, address: str, model: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.model = model
        self.calls: list[int] = []

    def __call__(self, rows: np.ndarray):
        self.calls.append(len(rows))
        return self.stub.ModelInfer(infer_request(self.model, {"input": rows}, version="1"))


def expected(iris_repo: Path, rows: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(iris_repo / "iris" / "1" / "model.onnx"))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": rows}), strict=True))


async def test_concurrent_predictions_share_calls_and_get_their_own_rows(replica, iris_repo):
    send = CountingSender(replica.grpc_address, "iris")
    coalescer = RequestCoalescer(send, max_rows=256, max_in_flight=2)
    requests = [X[i : i + 1 + i % 3] for i in range(0, 120, 3)]
    answers = await asyncio.gather(*(coalescer.submit(r) for r in requests))
    for rows, answer in zip(requests, answers, strict=True):
        want = expected(iris_repo, rows)
        assert answer.version == "1" and answer.model == "iris"
        np.testing.assert_array_equal(answer.outputs["label"], want["label"])
        np.testing.assert_allclose(
            answer.outputs["probabilities"], want["probabilities"], atol=1e-6
        )
    assert len(send.calls) < len(requests), "requests that arrived together shared a call"
    assert sum(send.calls) == sum(len(r) for r in requests)
    assert max(send.calls) <= 256
    await send.channel.close()


async def test_a_lone_request_is_sent_alone_at_once(replica):
    send = CountingSender(replica.grpc_address, "iris")
    coalescer = RequestCoalescer(send)
    answer = await asyncio.wait_for(coalescer.submit(X[:1]), timeout=5)
    assert send.calls == [1] and answer.outputs["label"].shape == (1,)
    await send.channel.close()


async def test_a_rejected_request_fails_alone(replica, iris_repo):
    send = CountingSender(replica.grpc_address, "iris")
    coalescer = RequestCoalescer(send)
    good = [X[i : i + 1] for i in range(8)]
    bad = X[:1].astype(np.float64)  # the replica rejects FP64 for an FP32 input
    results = await asyncio.gather(
        *(coalescer.submit(g) for g in good[:4]),
        coalescer.submit(bad),
        *(coalescer.submit(g) for g in good[4:]),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1
    assert failures[0].code() == grpc.StatusCode.INVALID_ARGUMENT
    answers = [r for r in results if not isinstance(r, BaseException)]
    for rows, answer in zip(good, answers, strict=True):
        np.testing.assert_array_equal(answer.outputs["label"], expected(iris_repo, rows)["label"])
    await send.channel.close()


async def test_unknown_model_fails_every_waiting_request(replica):
    send = CountingSender(replica.grpc_address, "nope")
    coalescer = RequestCoalescer(send)
    results = await asyncio.gather(
        *(coalescer.submit(X[i : i + 1]) for i in range(5)), return_exceptions=True
    )
    assert all(r.code() == grpc.StatusCode.NOT_FOUND for r in results)
    await send.channel.close()
