"""Canary and shadow rollouts on a real replica in fleet mode: traffic split, routing keys,
mirroring with answer comparison, and the per-version counters in its heartbeat."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from redis.asyncio import Redis
from sklearn.linear_model import LogisticRegression

from benchmarks import iris_models
from mlops_core import fleet_state
from mlops_core.fleet_state import (
    ROUTING_KEY_METADATA,
    CandidateRoute,
    DesiredModel,
    ServedModel,
    VersionStats,
)
from mlops_core.oip import infer_request
from mlops_core.protocol import open_inference_pb2_grpc as pb_grpc
from tests.conftest import new_redis_db

X, Y = iris_models.iris()


@pytest.fixture(scope="module")
def rollout_repo(iris_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """iris 1 (LR), 2 (RF), 3 (a copy of 1), 4 (LR answering other labels) and 5 (LR on three
    features: it fails on the four-feature rows callers send)."""
    root = tmp_path_factory.mktemp("rollout-repo")
    shutil.copytree(iris_repo / "iris", root / "iris")
    shutil.copytree(root / "iris" / "1", root / "iris" / "3")
    iris_models.write_version(
        root, "iris", "4", LogisticRegression(max_iter=200).fit(X, (Y + 1) % 3)
    )
    iris_models.write_version(root, "iris", "5", LogisticRegression(max_iter=200).fit(X[:, :3], Y))
    return root


@pytest.fixture(scope="module")
def rollout_redis(redis_url: str) -> str:
    return new_redis_db(redis_url)


@pytest.fixture
async def redis(rollout_redis: str):
    client = Redis.from_url(rollout_redis)
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
def replica(start_inference, rollout_repo: Path, rollout_redis: str):
    import redis as sync_redis

    sync_redis.Redis.from_url(rollout_redis).hset(
        fleet_state.DESIRED_KEY, "iris", '{"active": "1", "warm": []}'
    )
    env = {"MLOPS_RESYNC_INTERVAL_S": "1", "MLOPS_HEARTBEAT_INTERVAL_S": "0.2"}
    return start_inference(rollout_repo, name="rollout", redis_url=rollout_redis, env=env)


@pytest.fixture
async def stub(replica):
    async with grpc.aio.insecure_channel(replica.grpc_address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


async def served(redis: Redis) -> ServedModel:
    (report,) = await fleet_state.live_replicas(redis)
    return report.models["iris"]


async def eventually(
    redis: Redis, check: Callable[[ServedModel], bool], what: str, timeout_s: float = 20
) -> ServedModel:
    deadline = time.monotonic() + timeout_s
    while True:
        model = await served(redis)
        if check(model):
            return model
        assert time.monotonic() < deadline, f"{what}; the heartbeat says {model}"
        await asyncio.sleep(0.1)


async def roll_out(redis: Redis, candidate: CandidateRoute | None, active: str = "1") -> None:
    """Write the desired state and wait until the replica applies the route."""
    await fleet_state.set_desired(redis, "iris", DesiredModel(active=active, candidate=candidate))
    await eventually(
        redis,
        lambda m: m.active == active and m.candidate == candidate,
        f"route {candidate} not applied",
    )


async def answers(
    stub, count: int, version: str = "", key: str | None = None, width: int = 4
) -> Counter[str]:
    """How many of `count` requests each version answered ('error' for failures)."""
    metadata = ((ROUTING_KEY_METADATA, key),) if key is not None else None
    got: Counter[str] = Counter()
    for i in range(count):
        row = X[i % len(X) : i % len(X) + 1, :width]
        try:
            response = await stub.ModelInfer(
                infer_request("iris", {"input": row}, version=version), metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
            got["error"] += 1
        else:
            got[response.model_version] += 1
    return got


def stats_of(model: ServedModel, version: str) -> VersionStats:
    return model.stats.get(version) or VersionStats()


async def test_a_canary_splits_unpinned_requests_and_serves_pinned_ones_as_named(
    replica, redis, stub
):
    await roll_out(redis, CandidateRoute(version="2", weight=0.5))
    before = await served(redis)
    split = await answers(stub, 400)
    assert set(split) == {"1", "2"}
    assert 0.35 < split["2"] / 400 < 0.65, split
    assert await answers(stub, 30, version="1") == {"1": 30}
    assert await answers(stub, 30, version="2") == {"2": 30}
    # Each version's requests and latency buckets grew by what it answered.
    grown = {"1": split["1"] + 30, "2": split["2"] + 30}

    def counted(model: ServedModel) -> bool:
        return all(
            stats_of(model, v).requests - stats_of(before, v).requests == n
            and sum(stats_of(model, v).latency) - sum(stats_of(before, v).latency) == n
            for v, n in grown.items()
        )

    after = await eventually(redis, counted, f"stats did not grow by {grown}")
    assert all(
        len(stats_of(after, v).latency) == len(fleet_state.LATENCY_BUCKETS_S) + 1 for v in grown
    )
    assert stats_of(after, "2").errors == stats_of(before, "2").errors
    assert stats_of(after, "2").mirrored == 0, "no mirror without a mirror rate"


async def test_a_routing_key_always_lands_on_one_side(replica, redis, stub):
    await roll_out(redis, CandidateRoute(version="2", weight=0.5))
    sides = []
    for key in [f"user-{i}" for i in range(12)]:
        got = await answers(stub, 20, key=key)
        assert len(got) == 1, f"key {key} landed on both sides: {got}"
        sides.append(next(iter(got)))
    assert set(sides) == {"1", "2"}, sides


async def test_removing_the_candidate_sends_everything_to_the_active_version(replica, redis, stub):
    await roll_out(redis, CandidateRoute(version="2", weight=0.5))
    assert "2" in await answers(stub, 40)
    await roll_out(redis, None)
    assert await answers(stub, 100) == {"1": 100}
    assert await answers(stub, 100, key="user-1") == {"1": 100}


@pytest.mark.parametrize(("candidate", "agrees"), [("3", True), ("4", False)])
async def test_a_shadow_answers_nothing_and_compares_every_mirrored_request(
    replica, redis, stub, candidate, agrees
):
    await roll_out(redis, CandidateRoute(version=candidate, weight=0.0, mirror_rate=1.0))
    before = stats_of(await served(redis), candidate)
    assert await answers(stub, 100) == {"1": 100}

    def delta(model: ServedModel, field: str) -> int:
        return getattr(stats_of(model, candidate), field) - getattr(before, field)

    after = await eventually(
        redis,
        lambda m: (
            delta(m, "mirrored") + delta(m, "mirror_dropped") == 100
            and delta(m, "compared") == delta(m, "mirrored")
        ),
        "the mirror did not account for 100 requests",
    )
    assert delta(after, "mirrored") >= 50, "the mirror queue dropped most requests"
    assert delta(after, "requests") == 0, "a mirrored request is no request of the candidate's"
    assert sum(stats_of(after, candidate).mirror_latency) >= delta(after, "mirrored")
    if agrees:
        assert delta(after, "agreed") == delta(after, "compared")
    else:
        assert delta(after, "agreed") < delta(after, "compared")


async def test_a_candidate_that_fails_fails_only_its_share_and_never_in_shadow(
    replica, redis, stub
):
    await roll_out(redis, CandidateRoute(version="5", weight=0.5))
    before = await served(redis)
    split = await answers(stub, 200)
    assert set(split) == {"1", "error"} and 0.3 < split["error"] / 200 < 0.7, split
    await eventually(
        redis,
        lambda m: (
            stats_of(m, "5").errors - stats_of(before, "5").errors == split["error"]
            and stats_of(m, "1").errors == stats_of(before, "1").errors
        ),
        "the candidate's failures are not in its stats",
    )
    await roll_out(redis, CandidateRoute(version="5", weight=0.0, mirror_rate=1.0))
    before = stats_of(await served(redis), "5")
    assert await answers(stub, 100) == {"1": 100}
    after = await eventually(
        redis,
        lambda m: (
            stats_of(m, "5").mirror_errors - before.mirror_errors
            == stats_of(m, "5").mirrored - before.mirrored
            and stats_of(m, "5").mirrored
            + stats_of(m, "5").mirror_dropped
            - before.mirrored
            - before.mirror_dropped
            == 100
        ),
        "the mirror's failures are not in the candidate's stats",
    )
    assert after.stats["5"].mirror_errors > before.mirror_errors
    assert after.stats["5"].compared == before.compared
