"""Acceptance of the memory budget: a real replica process whose budget holds about half of
200 registered models answers every one of them in turn over gRPC, stays within its budget
(accounted, and in resident-set growth), and its hot models keep answering meanwhile."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
from redis.asyncio import Redis

from benchmarks import iris_models
from benchmarks.many_models import ACCEPTANCE_MODELS, ModelSet, desire_models, write_models
from inference.metrics import ReplicaMetrics
from inference.repository import BatchingPolicy, ModelRepository
from inference.sources import DirectorySource
from mlops_core import fleet_state
from mlops_core.oip import infer_request, response_arrays
from mlops_core.protocol import open_inference_pb2_grpc as pb_grpc
from tests.conftest import new_redis_db

X, _ = iris_models.iris()
HOT = [f"model-{i:03d}" for i in range(4)]


async def mean_size(models: ModelSet) -> float:
    """A version's measured size in this process, once onnxruntime is set up: the mean of an
    LR classifier and a regressor, as the models alternate."""
    repo = ModelRepository(DirectorySource(models.root), ReplicaMetrics(), BatchingPolicy())
    sizes = [(await repo.load(models.names[i], "1")).memory_bytes for i in range(4)]
    return sum(sizes) / len(sizes)


def hammer(address: str, models: ModelSet, stop: threading.Event, outcomes: list) -> None:
    """Hot models, one request after another, until `stop`: each outcome is (ok, seconds)."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while not stop.is_set():
            for name in HOT:
                started = time.perf_counter()
                try:
                    stub.ModelInfer(infer_request(name, {"input": X[:1, : models.width(name)]}))
                    outcomes.append((True, time.perf_counter() - started))
                except grpc.RpcError as exc:
                    outcomes.append((False, exc.code().name))


async def test_half_the_models_fit_and_every_model_answers(
    start_inference, redis_url: str, tmp_path: Path
):
    models = write_models(tmp_path / "models", ACCEPTANCE_MODELS)
    size = await mean_size(models)
    budget_mb = math.ceil(ACCEPTANCE_MODELS / 2 * size / 2**20)
    fleet_redis = new_redis_db(redis_url)
    replica = start_inference(
        models.root,
        name="budgeted",
        redis_url=fleet_redis,
        env={
            "MLOPS_REPLICA_MEMORY_BUDGET_MB": str(budget_mb),
            "MLOPS_COLD_LOAD_WAIT_S": "10",
            "MLOPS_RESYNC_INTERVAL_S": "1",
        },
    )
    health_url = f"{replica.http_url}/health"
    baseline_rss = httpx.get(health_url).json()["memory"]["process_rss_bytes"]

    await desire_models(fleet_redis, models.names)
    # The replica loads into free room until its budget is nearly full; the rest wait.
    redis = Redis.from_url(fleet_redis)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "the replica did not take the 200 models"
            await asyncio.sleep(0.2)
            body = httpx.get(health_url).json()
            memory = body["memory"]
            if (
                len(body["models"]) == ACCEPTANCE_MODELS
                and memory["budget_bytes"] - memory["resident_bytes"] < 2 * size
                and fleet_state.rollout_done(await fleet_state.live_replicas(redis), HOT[0], "1")
            ):
                break
    finally:
        await redis.aclose()
    resident_at_start = len(memory["resident_versions"])
    assert ACCEPTANCE_MODELS * 0.35 < resident_at_start < ACCEPTANCE_MODELS * 0.65

    stop, outcomes = threading.Event(), list[tuple[bool, object]]()
    hot = threading.Thread(target=hammer, args=(replica.grpc_address, models, stop, outcomes))
    hot.start()
    try:
        async with grpc.aio.insecure_channel(replica.grpc_address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for name in models.names:
                rows = X[::15, : models.width(name)]
                response = await stub.ModelInfer(infer_request(name, {"input": rows}))
                assert response.model_name == name
                answer = next(iter(response_arrays(response).values()))
                np.testing.assert_allclose(
                    answer.reshape(-1), models.expected(name, rows), rtol=1e-4
                )
    finally:
        stop.set()
        hot.join(10)

    memory = httpx.get(health_url).json()["memory"]
    budget = budget_mb * 2**20
    assert memory["budget_bytes"] == budget
    assert memory["resident_bytes"] <= budget
    assert memory["resident_bytes"] == sum(v["bytes"] for v in memory["resident_versions"].values())
    assert memory["process_rss_bytes"] - baseline_rss <= budget
    assert memory["evictions"] >= ACCEPTANCE_MODELS - resident_at_start - len(HOT)
    assert memory["cold_load_waits"]["served"] >= ACCEPTANCE_MODELS / 3
    assert all(f"{name}/1" in memory["resident_versions"] for name in HOT)
    failures = [o for o in outcomes if not o[0]]
    assert not failures and len(outcomes) > 100, (failures[:5], len(outcomes))
    metrics = httpx.get(f"{replica.http_url}/metrics").text
    assert "mlops_inference_version_evictions_total" in metrics
    assert 'mlops_inference_cold_load_waits_total{outcome="served"}' in metrics
