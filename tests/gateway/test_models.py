"""Models through a real fleet: listing, predict (equal to tritonclient), bad input, rollback
under load with zero failed requests, and removal."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from benchmarks import iris_models
from benchmarks.processes import VENV_BIN
from mlops_core import fleet_state, worker_heartbeat
from mlops_core.fleet_state import DesiredModel
from tests.conftest import InferenceServer, StartInference, new_redis_db
from tests.gateway.conftest import Gateway, fleet_target, gateway_env, launch_gateway, start_fleet

X, _ = iris_models.iris()


@pytest.fixture(scope="module")
def fleet_redis(redis_url: str) -> str:
    return new_redis_db(redis_url)


@pytest.fixture(scope="module")
def fleet(
    start_inference: StartInference, iris_repo: Path, fleet_redis: str
) -> list[InferenceServer]:
    return start_fleet(start_inference, iris_repo, fleet_redis, "gw-models")


@pytest.fixture(scope="module")
def model_gateway(
    run_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    fleet_redis: str,
    mlflow_uri: str,
    fleet: list[InferenceServer],
) -> Iterator[Gateway]:
    env = gateway_env(
        tmp_path_factory.mktemp("gateway-models"),
        fleet_redis,
        MLFLOW_TRACKING_URI=mlflow_uri,
        MLOPS_FLEET_ADDRESS=fleet_target(fleet),
    )
    gw = launch_gateway(run_dir, "gateway-models", env)
    yield gw
    gw.process.stop()


@pytest.fixture(scope="module")
def api(model_gateway: Gateway) -> Iterator[httpx.Client]:
    with model_gateway.client() as client:
        yield client


@pytest.fixture
async def redis(fleet_redis: str):
    client = Redis.from_url(fleet_redis)
    yield client
    await client.aclose()


def tritonclient_predict(address: str, model: str, rows: list[list[float]]) -> dict:
    """tritonclient in its own process: its stubs and ours cannot share one."""
    spec = {"url": address, "model": model, "rows": rows}
    out = subprocess.run(
        [str(VENV_BIN / "python"), "-m", "tests.support.triton_probe", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


async def test_ready_names_every_component_and_replica(
    model_gateway: Gateway, fleet: list[InferenceServer], redis: Redis
):
    beat = worker_heartbeat.WorkerBeat("w-ready", "local", None)
    await worker_heartbeat.beat(redis, beat)
    try:
        response = httpx.get(f"{model_gateway.url}/ready", timeout=10)
    finally:
        await worker_heartbeat.forget(redis, beat.worker_id)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ready"
    checks = response.json()["checks"]
    replicas = [f"inference gw-models-{i}-{s.grpc_port}" for i, s in enumerate(fleet)]
    assert set(checks) == {"redis", "database", "mlflow", "inference", "workers", *replicas}
    assert checks["inference"] == "ok: 2 live replicas"
    for replica in replicas:
        assert checks[replica] == "ok: iris 2 (warm 1), petal 1"
    assert checks["workers"] == "ok: 1 live workers (w-ready), sandbox local"


def test_ready_fails_naming_workers_when_none_is_live(model_gateway: Gateway):
    response = httpx.get(f"{model_gateway.url}/ready", timeout=10)
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["detail"] == "not ready: workers"
    assert body["checks"]["workers"] == "no live pipeline worker"
    assert body["checks"]["inference"] == "ok: 2 live replicas"


async def test_ready_names_a_worker_that_cannot_sandbox(model_gateway: Gateway, redis: Redis):
    good = worker_heartbeat.WorkerBeat("w-good", "local", None)
    bad = worker_heartbeat.WorkerBeat("w-bad", "local", "unshare, setpriv not found")
    await worker_heartbeat.beat(redis, good)
    try:
        response = httpx.get(f"{model_gateway.url}/ready", timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["checks"]["workers"] == "ok: 1 live workers (w-good), sandbox local"
        await worker_heartbeat.beat(redis, bad)
        response = httpx.get(f"{model_gateway.url}/ready", timeout=10)
        assert response.status_code == 503
        assert response.json()["detail"] == "not ready: workers"
        assert "unshare, setpriv not found" in response.json()["checks"]["workers"]
    finally:
        for beat in (good, bad):
            await worker_heartbeat.forget(redis, beat.worker_id)


def test_list_models_shows_versions_and_replicas(api: httpx.Client, fleet):
    response = api.get("/models")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["registry_reachable"] is True
    models = {m["name"]: m for m in body["models"]}
    iris = models["iris"]
    assert iris["active_version"] == "2" and iris["warm_versions"] == ["1"]
    assert [v["version"] for v in iris["versions"]] == ["1", "2"]
    assert len(iris["replicas"]) == 2
    assert {r["active"] for r in iris["replicas"]} == {"2"}
    assert {tuple(sorted(r["loaded"])) for r in iris["replicas"]} == {("1", "2")}
    assert models["petal"]["active_version"] == "1"


@pytest.mark.parametrize(("model", "rows"), [("iris", X[[0, 60, 120]]), ("petal", X[:3, :3])])
def test_predict_equals_tritonclient_on_the_fleet(
    api: httpx.Client, fleet: list[InferenceServer], model: str, rows: np.ndarray
):
    data = rows.tolist()
    response = api.post(f"/models/{model}/predict", json={"data": data})
    assert response.status_code == 200, response.text
    ours = response.json()
    theirs = tritonclient_predict(fleet[0].grpc_address, model, data)
    assert ours["model"] == model
    assert ours["version"] == theirs["model_version"]
    if model == "iris":
        assert ours["predictions"] == theirs["outputs"]["label"] == [0, 1, 2]
        np.testing.assert_allclose(ours["probabilities"], theirs["outputs"]["probabilities"])
    else:
        assert "probabilities" not in ours
        np.testing.assert_allclose(
            ours["predictions"], np.ravel(theirs["outputs"]["variable"]), rtol=1e-6
        )


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"data": [[1.0, 2.0, 3.0]]}, 422, "row 0 has 3 values; model 'iris' takes shape [n, 4]"),
        (
            {"data": [[1, 2, 3, 4], [1, 2]]},
            422,
            "row 1 has 2 values; model 'iris' takes shape [n, 4]",
        ),
        ({"data": []}, 422, "non-empty list of rows; model 'iris' takes shape [n, 4]"),
        (
            {"data": [[1, "x", 3, 4]]},
            422,
            "holds 'x', not a number; model 'iris' takes numbers of shape [n, 4]",
        ),
        ({"data": [[1, True, 3, 4]]}, 422, "holds True, not a number"),
        ({"data": [[1, None, 3, 4]]}, 422, "holds None, not a number"),
        ({"data": [[1, 1e300, 3, 4]]}, 422, "out of range for FP32"),
        ({"data": [1, 2, 3, 4]}, 422, "row 0 is not a list; model 'iris' takes shape [n, 4]"),
        ({"data": "1,2,3,4"}, 422, "non-empty list of rows"),
        ({"rows": [[1, 2, 3, 4]]}, 422, 'body must be a JSON object like {"data"'),
        ([[1, 2, 3, 4]], 422, 'body must be a JSON object like {"data"'),
    ],
)
def test_bad_predict_input_is_a_clear_4xx(api: httpx.Client, body, status: int, message: str):
    response = api.post("/models/iris/predict", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_predict_rejects_invalid_json_and_unknown_models(api: httpx.Client):
    response = api.post(
        "/models/iris/predict",
        content=b'{"data": [[1,2,',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["detail"].startswith("body is not valid JSON")
    response = api.post("/models/nope/predict", json={"data": [[1, 2, 3, 4]]})
    assert response.status_code == 404
    assert "model 'nope' is not served" in response.json()["detail"]
    response = api.post("/models/bad name!/predict", json={"data": [[1, 2, 3, 4]]})
    assert response.status_code == 422


def test_rollback_to_a_missing_version_or_model_is_404(api: httpx.Client):
    response = api.post("/models/iris/rollback", json={"version": "9"})
    assert response.status_code == 404
    assert response.json()["detail"] == "model 'iris' has no version '9'; versions: 1, 2"
    response = api.post("/models/ghost/rollback", json={"version": "1"})
    assert response.status_code == 404
    for bad in ({}, {"version": ""}, {"version": "../1"}, {"version": 1}, {"version": "1", "x": 1}):
        response = api.post("/models/iris/rollback", json=bad)
        assert response.status_code == 422, bad


async def test_rollback_under_continuous_load_fails_no_request(
    model_gateway: Gateway, redis: Redis
):
    row = {"data": [X[60].tolist()]}
    results: list[tuple[int, str | None]] = []
    stop = asyncio.Event()

    async def load(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            try:
                response = await client.post("/models/iris/predict", json=row)
                version = response.json().get("version") if response.status_code == 200 else None
                results.append((response.status_code, version))
            except httpx.HTTPError as exc:
                results.append((0, repr(exc)))

    async with model_gateway.async_client() as client:
        workers = [asyncio.create_task(load(client)) for _ in range(8)]
        await asyncio.sleep(0.5)
        for version, previous in (("1", "2"), ("2", "1")):
            response = await client.post("/models/iris/rollback", json={"version": version})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["active_version"] == version
            assert body["previous_version"] == previous
            assert [r["active"] for r in body["replicas"]] == [version, version]
            await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*workers)
    failures = [r for r in results if r[0] != 200]
    assert not failures, failures[:5]
    versions = [v for _, v in results]
    assert len(results) > 50 and {"1", "2"} <= set(versions)
    # After the second rollback, every answer comes from version 2 again.
    assert versions[-1] == "2"
    desired = await fleet_state.get_desired_model(redis, "iris")
    assert desired == DesiredModel(active="2", warm=["1"])


def test_delete_model_stops_serving_everywhere(api: httpx.Client, fleet_redis: str):
    assert api.post("/models/petal/predict", json={"data": [[1.0, 2.0, 3.0]]}).status_code == 200
    response = api.delete("/models/petal")
    assert response.status_code == 204, response.text
    client = sync_redis.Redis.from_url(fleet_redis)
    assert client.hget(fleet_state.DESIRED_KEY, "petal") is None
    models = {m["name"]: m for m in api.get("/models").json()["models"]}
    assert len(models["iris"]["replicas"]) == 2
    assert "petal" not in models or not models["petal"]["replicas"]
    response = api.post("/models/petal/predict", json={"data": [[1.0, 2.0, 3.0]]})
    assert response.status_code == 404
    assert api.delete("/models/petal").status_code == 404
