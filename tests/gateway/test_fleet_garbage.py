"""The gateway over a desired state with garbage in it: `GET /models` answers 200, rollback of
other models (and of the model whose entry is bad) works at once, predictions keep working."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis as sync_redis

from benchmarks import iris_models
from mlops_core import fleet_state
from tests.conftest import InferenceServer, StartInference, new_redis_db
from tests.gateway.conftest import Gateway, fleet_target, gateway_env, launch_gateway, start_fleet

X, _ = iris_models.iris()
GARBAGE: dict[bytes, bytes] = {
    b"bad-json": b"{",
    b"wrong-types": b'{"active": ["1"], "warm": {}}',
    b"version-not-digits": b'{"active": "latest", "warm": []}',
    b"unknown-layout": b'{"active": "1", "warm": [], "weights": 0.5}',
    b"../escape": b'{"active": "1", "warm": []}',
}


@pytest.fixture(scope="module")
def garbage_redis(redis_url: str) -> str:
    url = new_redis_db(redis_url)
    sync_redis.Redis.from_url(url).hset(fleet_state.DESIRED_KEY, mapping=GARBAGE)
    return url


@pytest.fixture(scope="module")
def fleet(
    start_inference: StartInference, iris_repo: Path, garbage_redis: str
) -> list[InferenceServer]:
    return start_fleet(start_inference, iris_repo, garbage_redis, "gw-garbage")


@pytest.fixture(scope="module")
def api(
    run_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    garbage_redis: str,
    fleet: list[InferenceServer],
) -> Iterator[httpx.Client]:
    # NOTE: no MLflow behind it (the default env points at a closed port): versions come
    # from the fleet, which is all a rollback between warm versions needs.
    env = gateway_env(
        tmp_path_factory.mktemp("gateway-garbage"),
        garbage_redis,
        MLOPS_FLEET_ADDRESS=fleet_target(fleet),
    )
    gw: Gateway = launch_gateway(run_dir, "gateway-garbage", env)
    with gw.client() as client:
        yield client
    gw.process.stop()


def models(api: httpx.Client) -> dict[str, dict]:
    response = api.get("/models")
    assert response.status_code == 200, response.text
    return {m["name"]: m for m in response.json()["models"]}


def test_list_models_skips_the_garbage(api: httpx.Client):
    listed = models(api)
    assert set(listed) == {"iris", "petal"}
    assert listed["iris"]["active_version"] == "2"
    assert listed["iris"]["warm_versions"] == ["1"]
    assert len(listed["iris"]["replicas"]) == 2


def test_rollback_of_another_model_answers_at_once(api: httpx.Client):
    for version in ("1", "2"):
        started = time.monotonic()
        response = api.post("/models/iris/rollback", json={"version": version})
        assert response.status_code == 200, response.text
        assert time.monotonic() - started < 10
        assert [r["active"] for r in response.json()["replicas"]] == [version, version]
    response = api.post("/models/iris/predict", json={"data": [X[0].tolist()]})
    assert response.status_code == 200 and response.json()["version"] == "2"


def test_a_served_model_whose_entry_turns_bad_is_listed_and_rolled_back(
    api: httpx.Client, garbage_redis: str
):
    sync_redis.Redis.from_url(garbage_redis).hset(
        fleet_state.DESIRED_KEY, "iris", '{"active": "2", "warm": ["1"], "x": 1}'
    )
    listed = models(api)["iris"]
    assert listed["active_version"] is None, "a bad entry is no desired version"
    assert {r["active"] for r in listed["replicas"]} == {"2"}, "replicas keep serving it"
    assert api.post("/models/iris/predict", json={"data": [X[0].tolist()]}).status_code == 200
    response = api.post("/models/iris/rollback", json={"version": "1"})
    assert response.status_code == 200, response.text
    assert models(api)["iris"]["active_version"] == "1"
