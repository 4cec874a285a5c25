"""Malformed desired state: garbage written straight into Redis (as a notebook with Redis access
could) is logged once and skipped; real replicas start, stay ready and keep reconciling the
rest, and deploys, rollbacks and new entries still work."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from benchmarks import iris_models
from mlops_core import fleet_state
from mlops_core.errors import InvalidInput
from mlops_core.fleet_state import DesiredModel
from mlops_core.oip import infer_request
from mlops_core.protocol import open_inference_pb2_grpc as pb_grpc
from pipeline_worker.stages.deploy import deploy
from tests.conftest import InferenceServer, StartInference, new_redis_db

X, _ = iris_models.iris()
FLEET_ENV = {"MLOPS_RESYNC_INTERVAL_S": "1", "MLOPS_HEARTBEAT_TTL_S": "2"}

BAD_VALUES: dict[bytes, bytes] = {
    b"bad-json": b'{"active": "1", "warm": [',
    b"wrong-types": b'{"active": 1, "warm": "2"}',
    b"not-an-object": b'["1"]',
    b"version-not-digits": b'{"active": "../../etc", "warm": []}',
    b"unicode-digits": '{"active": "²", "warm": []}'.encode(),
    b"warm-not-digits": b'{"active": "1", "warm": ["1b"]}',
    b"unknown-layout": b'{"active": "1", "warm": [], "canary": "secret-canary-value"}',
}
BAD_NAMES: dict[bytes, bytes] = {
    b"../escape": b'{"active": "1", "warm": []}',
    b"bad name": b'{"active": "1", "warm": []}',
    b"\xff\xfe-binary": b'{"active": "1", "warm": []}',
}
GARBAGE = {**BAD_VALUES, **BAD_NAMES}
"""Every kind of malformed entry: bad values under model names, good values under names that
are not model names."""


def logged_name(raw: bytes) -> str:
    return repr(raw.decode(errors="replace"))


@pytest.fixture(scope="module")
def garbage_redis(redis_url: str) -> str:
    url = new_redis_db(redis_url)
    client = sync_redis.Redis.from_url(url)
    client.hset(fleet_state.DESIRED_KEY, mapping={**GARBAGE, b"petal": b"not json"})
    client.hset(fleet_state.DESIRED_KEY, "iris", '{"active": "1", "warm": []}')
    return url


@pytest.fixture(scope="module")
def fleet(
    start_inference: StartInference, iris_repo: Path, garbage_redis: str
) -> list[InferenceServer]:
    # NOTE: start_inference waits for /ready: a start that blocked on garbage fails here.
    return [
        start_inference(iris_repo, name=f"garbage-{i}", redis_url=garbage_redis, env=FLEET_ENV)
        for i in range(2)
    ]


@pytest.fixture
async def redis(garbage_redis: str):
    client = Redis.from_url(garbage_redis)
    yield client
    await client.aclose()


async def served_version(replica: InferenceServer, model: str, width: int = 4) -> str:
    async with grpc.aio.insecure_channel(replica.grpc_address) as channel:
        response = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            infer_request(model, {"input": X[:1, :width]})
        )
    return response.model_version


async def test_replicas_start_on_garbage_and_serve_the_valid_entries(fleet, redis):
    reports = await fleet_state.wait_for_rollout(redis, "iris", "1", timeout_s=20)
    assert len(reports) == 2
    assert all(set(r.models) == {"iris"} for r in reports)
    assert [await served_version(r, "iris") for r in fleet] == ["1", "1"]
    state = await fleet_state.get_desired(redis)
    assert state.models == {"iris": DesiredModel(active="1")}
    assert state.malformed == {n.decode() for n in BAD_VALUES} | {"petal"}


async def test_each_bad_entry_is_logged_once_not_on_every_resync(fleet, redis):
    await asyncio.sleep(3.5)  # three more resyncs at 1 s
    for replica in fleet:
        log = replica.process.log_path.read_text(errors="replace")
        for name in [*GARBAGE, b"petal"]:
            line = f"skipping malformed desired-state entry {logged_name(name)}"
            assert log.count(line) == 1, (name, replica.process.log_tail())
        assert "secret-canary-value" not in log, "an entry's value is never logged"
        assert "Traceback" not in log


async def test_deploys_of_other_models_still_work(fleet, redis):
    started = time.monotonic()
    await fleet_state.set_desired(redis, "iris", DesiredModel(active="2", warm=["1"]))
    reports = await fleet_state.wait_for_rollout(redis, "iris", "2", timeout_s=20)
    assert time.monotonic() - started < 5, "a pub/sub notice still moves replicas at once"
    assert all(r.models["iris"].loaded == ["1", "2"] for r in reports)
    assert [await served_version(r, "iris") for r in fleet] == ["2", "2"]


async def test_a_new_deploy_of_the_same_model_overwrites_the_bad_entry(fleet, redis):
    lines: list[str] = []

    async def log(line: str) -> None:
        lines.append(line)

    reports = await deploy(redis, "petal", "1", timeout_s=20, keep_versions=3, log=log)
    assert len(reports) == 2 and lines
    assert await fleet_state.get_desired_model(redis, "petal") == DesiredModel(active="1")
    assert [await served_version(r, "petal", width=3) for r in fleet] == ["1", "1"]


async def test_a_served_model_whose_entry_turns_bad_keeps_serving_until_rewritten(fleet, redis):
    await fleet_state.set_desired(redis, "iris", DesiredModel(active="2", warm=["1"]))
    await fleet_state.wait_for_rollout(redis, "iris", "2", timeout_s=20)
    await redis.hset(fleet_state.DESIRED_KEY, "iris", '{"active": 2}')
    await redis.publish(fleet_state.CHANGED_CHANNEL, "iris")
    await asyncio.sleep(2.5)  # the notice and two resyncs
    assert await fleet_state.get_desired_model(redis, "iris") is None
    reports = await fleet_state.live_replicas(redis)
    assert [r.models["iris"].active for r in reports] == ["2", "2"]
    assert [await served_version(r, "iris") for r in fleet] == ["2", "2"]
    # A rollback writes a good entry over the bad one, and the fleet follows it.
    await fleet_state.set_desired(redis, "iris", DesiredModel(active="1", warm=["2"]))
    await fleet_state.wait_for_rollout(redis, "iris", "1", timeout_s=20)
    assert [await served_version(r, "iris") for r in fleet] == ["1", "1"]


async def test_a_malformed_heartbeat_is_skipped(fleet, redis):
    forged = fleet_state.REPLICA_KEY_PREFIX + "forged"
    await redis.set(forged, '{"replica_id": "forged", "models": 3}', px=60_000)
    await redis.set(forged + "-2", b"\xff not json", px=60_000)
    await fleet_state.set_desired(redis, "iris", DesiredModel(active="2", warm=["1"]))
    reports = await fleet_state.wait_for_rollout(redis, "iris", "2", timeout_s=20)
    assert sorted(r.replica_id for r in reports) == sorted(
        f"garbage-{i}-{s.grpc_port}" for i, s in enumerate(fleet)
    )
    await redis.delete(forged, forged + "-2")


async def test_writers_refuse_to_write_garbage(redis):
    before = await redis.hgetall(fleet_state.DESIRED_KEY)
    for model, desired in [
        ("../escape", DesiredModel(active="1")),
        ("iris", DesiredModel(active="v1")),
        ("iris", DesiredModel(active="1", warm=["1b"])),
    ]:
        with pytest.raises(InvalidInput, match="cannot record the desired state"):
            await fleet_state.set_desired(redis, model, desired)
    assert await redis.hgetall(fleet_state.DESIRED_KEY) == before


async def test_a_replica_starts_when_the_desired_key_is_not_even_a_hash(
    start_inference: StartInference, iris_repo: Path, redis_url: str
):
    url = new_redis_db(redis_url)
    client = Redis.from_url(url)
    try:
        await client.set(fleet_state.DESIRED_KEY, "not a hash")
        replica = start_inference(iris_repo, name="wrongtype", redis_url=url, env=FLEET_ENV)
        assert (await fleet_state.get_desired(client)).models == {}
        reports = await fleet_state.live_replicas(client)
        assert [r.models for r in reports] == [{}]
        # Once the key is a hash again, the replica follows it.
        await client.delete(fleet_state.DESIRED_KEY)
        await fleet_state.set_desired(client, "iris", DesiredModel(active="1"))
        await fleet_state.wait_for_rollout(client, "iris", "1", timeout_s=20)
        assert await served_version(replica, "iris") == "1"
        log = replica.process.log_path.read_text(errors="replace")
        assert log.count("the key is not a hash") == 1
    finally:
        await client.aclose()
