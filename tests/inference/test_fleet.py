"""Fleet mode: real replicas following the desired state in a real Redis."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from redis.asyncio import Redis

from benchmarks import iris_models
from mlops_core import fleet_state
from mlops_core.errors import RolloutTimeout
from mlops_core.fleet_state import DesiredModel
from mlops_core.oip import infer_request
from mlops_core.protocol import open_inference_pb2_grpc as pb_grpc
from tests.conftest import new_redis_db

X, _ = iris_models.iris()


@pytest.fixture(scope="module")
def fleet_redis(redis_url: str) -> str:
    return new_redis_db(redis_url)


@pytest.fixture
async def redis(fleet_redis: str):
    client = Redis.from_url(fleet_redis)
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
def fleet(start_inference, iris_repo: Path, fleet_redis: str):
    import redis as sync_redis

    sync_redis.Redis.from_url(fleet_redis).hset(
        fleet_state.DESIRED_KEY, "iris", '{"active": "1", "warm": []}'
    )
    env = {"MLOPS_RESYNC_INTERVAL_S": "1", "MLOPS_HEARTBEAT_TTL_S": "2"}
    return [
        start_inference(iris_repo, name=f"replica-{i}", redis_url=fleet_redis, env=env)
        for i in range(2)
    ]


async def served_versions(replicas) -> list[str]:
    versions = []
    for replica in replicas:
        async with grpc.aio.insecure_channel(replica.grpc_address) as channel:
            response = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                infer_request("iris", {"input": X[:1]})
            )
            versions.append(response.model_version)
    return versions


async def test_replicas_follow_the_desired_version(fleet, redis):
    await fleet_state.wait_for_rollout(redis, "iris", "1", timeout_s=20)
    assert await served_versions(fleet) == ["1", "1"]
    started = time.monotonic()
    await fleet_state.set_desired(redis, "iris", DesiredModel(active="2", warm=["1"]))
    reports = await fleet_state.wait_for_rollout(redis, "iris", "2", timeout_s=20)
    assert time.monotonic() - started < 5, "a pub/sub notice moves replicas at once"
    assert {r.replica_id for r in reports} == {
        f"replica-{i}-{s.grpc_port}" for i, s in enumerate(fleet)
    }
    assert all(r.models["iris"].loaded == ["1", "2"] for r in reports)
    assert await served_versions(fleet) == ["2", "2"]


async def test_restarted_replica_comes_up_on_the_desired_version(
    fleet, redis, start_inference, iris_repo, fleet_redis
):
    await fleet_state.set_desired(redis, "iris", DesiredModel(active="2", warm=["1"]))
    await fleet_state.wait_for_rollout(redis, "iris", "2", timeout_s=20)
    victim = fleet.pop()
    victim.process.kill()
    # The killed replica's heartbeat expires by its TTL.
    deadline = time.monotonic() + 10
    while len(await fleet_state.live_replicas(redis)) != 1:
        assert time.monotonic() < deadline, "dead replica's heartbeat did not expire"
        await asyncio.sleep(0.2)
    replacement = start_inference(
        iris_repo,
        name="replica-restarted",
        redis_url=fleet_redis,
        env={"MLOPS_RESYNC_INTERVAL_S": "1", "MLOPS_HEARTBEAT_TTL_S": "2"},
    )
    fleet.append(replacement)
    reports = await fleet_state.wait_for_rollout(redis, "iris", "2", timeout_s=20)
    assert len(reports) == 2
    restarted = next(r for r in reports if r.replica_id.startswith("replica-restarted"))
    assert restarted.models["iris"].active == "2"
    assert await served_versions(fleet) == ["2", "2"]


async def test_unloadable_version_times_out_and_previous_keeps_serving(fleet, redis):
    await fleet_state.set_desired(redis, "iris", DesiredModel(active="2", warm=["1"]))
    await fleet_state.wait_for_rollout(redis, "iris", "2", timeout_s=20)
    await fleet_state.set_desired(redis, "iris", DesiredModel(active="9", warm=["2"]))
    with pytest.raises(RolloutTimeout, match="load failures"):
        await fleet_state.wait_for_rollout(redis, "iris", "9", timeout_s=3)
    assert await served_versions(fleet) == ["2", "2"]


async def test_removed_model_stops_everywhere(fleet, redis):
    await fleet_state.set_desired(redis, "petal", DesiredModel(active="1"))
    await fleet_state.wait_for_rollout(redis, "petal", "1", timeout_s=20)
    await fleet_state.remove_desired(redis, "petal")
    await fleet_state.wait_for_rollout(redis, "petal", None, timeout_s=20)
    async with grpc.aio.insecure_channel(fleet[0].grpc_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                infer_request("petal", {"input": X[:1, :3]})
            )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
