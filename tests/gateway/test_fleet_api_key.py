"""REST predictions through replicas that require the API key: the gateway's gRPC client sends
it, end to end; a gateway holding another key is refused by the fleet (so the test can fail)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis as sync_redis

from benchmarks import iris_models
from mlops_core import fleet_state
from tests.conftest import InferenceServer, StartInference, new_redis_db
from tests.gateway.conftest import API_KEY, Gateway, fleet_target, gateway_env, launch_gateway

X, _ = iris_models.iris()


@pytest.fixture(scope="module")
def keyed_fleet(
    start_inference: StartInference, iris_repo: Path, redis_url: str
) -> list[InferenceServer]:
    url = new_redis_db(redis_url)
    sync_redis.Redis.from_url(url).hset(fleet_state.DESIRED_KEY, "iris", '{"active": "2"}')
    env = {"MLOPS_API_KEY": API_KEY, "MLOPS_RESYNC_INTERVAL_S": "1"}
    return [
        start_inference(iris_repo, name=f"gw-keyed-{i}", redis_url=url, env=env) for i in range(2)
    ]


def gateway_with_key(
    run_dir: Path, tmp: Path, redis_url: str, fleet: list[InferenceServer], name: str, key: str
) -> Gateway:
    env = gateway_env(tmp, redis_url, MLOPS_FLEET_ADDRESS=fleet_target(fleet), MLOPS_API_KEY=key)
    return launch_gateway(run_dir, name, env)


@pytest.fixture(scope="module")
def keyed_gateway(
    run_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    gateway_redis: str,
    keyed_fleet: list[InferenceServer],
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gw-keyed")
    gw = gateway_with_key(run_dir, tmp, gateway_redis, keyed_fleet, "gateway-keyed", API_KEY)
    yield gw
    gw.process.stop()


def test_rest_predict_through_keyed_replicas(keyed_gateway: Gateway):
    with keyed_gateway.client() as api:
        for _ in range(4):  # round robin: both replicas answer
            response = api.post("/models/iris/predict", json={"data": X[[0, 60, 120]].tolist()})
            assert response.status_code == 200, response.text
            assert response.json()["predictions"] == [0, 1, 2]
            assert response.json()["version"] == "2"


def test_a_gateway_with_another_key_is_refused_by_the_fleet(
    run_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    gateway_redis: str,
    keyed_fleet: list[InferenceServer],
):
    other = "another-key-than-the-fleets"
    tmp = tmp_path_factory.mktemp("gw-wrong")
    gw = gateway_with_key(run_dir, tmp, gateway_redis, keyed_fleet, "gateway-wrong-key", other)
    try:
        response = httpx.post(
            f"{gw.url}/models/iris/predict",
            json={"data": [X[0].tolist()]},
            headers={"Authorization": f"Bearer {other}"},
            timeout=30,
        )
    finally:
        gw.process.stop()
    assert response.status_code == 502, response.text
    detail = response.json()["detail"]
    assert "UNAUTHENTICATED" in detail
    assert API_KEY not in detail and other not in detail
