"""A GitHub-signed push through the whole platform: the gateway queues one pipeline, a real
`python -m pipeline_worker` runs it (kernel, MLflow, fleet), and the WebSocket shows its lines
live, then closes; the new model then answers through the gateway."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
import websockets

from benchmarks.processes import ManagedProcess
from tests.conftest import InferenceServer, StartInference, new_redis_db
from tests.gateway.conftest import (
    API_KEY,
    Gateway,
    fleet_target,
    gateway_env,
    launch_gateway,
    make_local_repo,
    signed_post,
)

MODEL = "gw-e2e"
NOTEBOOK_PATH = "notebooks/train.ipynb"


def training_notebook() -> str:
    """The smallest notebook that honours the contract (tagged cells, injected parameters)."""
    cells = [
        (
            "parameters",
            'MODEL_OUTPUT_PATH = "model.joblib"\nPIPELINE_ID = ""\nMLFLOW_TRACKING_URI = None',
        ),
        ("mlops:config", f'MODEL_NAME = "{MODEL}"\nVERSION = "1.0"'),
        (
            "mlops:preprocessing",
            "import numpy as np\nX = np.arange(40, dtype=float).reshape(20, 2)\n"
            "y = (X[:, 0] > 20).astype(int)\nprint('rows', len(X))",
        ),
        (
            "mlops:training",
            "from sklearn.tree import DecisionTreeClassifier\n"
            "model = DecisionTreeClassifier(max_depth=2, random_state=0).fit(X, y)\n"
            "print('trained')",
        ),
        ("mlops:export", "import joblib\njoblib.dump(model, MODEL_OUTPUT_PATH)"),
    ]
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    for tag, source in cells:
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["tags"] = [tag]
        nb.cells.append(cell)
    return nbformat.writes(nb)


@pytest.fixture(scope="module")
def platform_env(
    redis_url: str, mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    return gateway_env(
        tmp_path_factory.mktemp("e2e"),
        new_redis_db(redis_url),
        MLFLOW_TRACKING_URI=mlflow_uri,
        MLOPS_DEPLOY_TIMEOUT_S="90",
        MLOPS_EXECUTION_TIMEOUT_S="120",
    )


@pytest.fixture(scope="module")
def replica(
    start_inference: StartInference, platform_env: dict[str, str], tmp_path_factory
) -> InferenceServer:
    return start_inference(
        tmp_path_factory.mktemp("e2e-models"),
        name="gw-e2e-replica",
        redis_url=platform_env["REDIS_URL"],
        env={"MLFLOW_TRACKING_URI": platform_env["MLFLOW_TRACKING_URI"]},
        extra_args=["--model-source", "mlflow"],
    )


@pytest.fixture(scope="module")
def e2e_gateway(
    run_dir: Path, platform_env: dict[str, str], replica: InferenceServer
) -> Iterator[Gateway]:
    env = {**platform_env, "MLOPS_FLEET_ADDRESS": fleet_target([replica])}
    gw = launch_gateway(run_dir, "gateway-e2e", env)
    yield gw
    gw.process.stop()


@pytest.fixture(scope="module")
def worker(run_dir: Path, platform_env: dict[str, str]) -> Iterator[ManagedProcess]:
    process = ManagedProcess(
        "gateway-e2e-worker", [sys.executable, "-m", "pipeline_worker"], run_dir, env=platform_env
    ).start()
    process.wait_until(lambda: "pipeline worker" in process.log_tail(100_000), 90, "worker ready")
    yield process
    process.stop()


async def test_signed_push_runs_a_pipeline_watched_live_over_websocket(
    e2e_gateway: Gateway, worker: ManagedProcess, tmp_path: Path
):
    repo = make_local_repo(tmp_path, "e2e", {NOTEBOOK_PATH: training_notebook()})
    with e2e_gateway.client() as api:
        registered = api.post(
            "/repos", json={"github_url": repo.url, "notebook_path": NOTEBOOK_PATH}
        )
        assert registered.status_code == 201, registered.text
        sha = repo.commit({NOTEBOOK_PATH: training_notebook() + "\n"})
        response = signed_post(api, repo.push_payload(sha, modified=[NOTEBOOK_PATH]))
        assert response.status_code == 202, response.text
        (pipeline_id,) = response.json()["pipeline_ids"]

    received: list[tuple[float, dict]] = []
    url = f"{e2e_gateway.ws_url}/ws/pipelines/{pipeline_id}/logs"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with websockets.connect(url, additional_headers=headers) as ws:
        async with asyncio.timeout(240):
            async for message in ws:
                received.append((time.monotonic(), json.loads(message)))
        assert ws.close_code == 1000
    entries = [e for _, e in received]
    assert entries[-1]["end"] == "succeeded", entries[-10:]
    lines = [e["line"] for e in entries if "line" in e]
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    # Lines arrived as they happened, not in one burst at the end: a replay delivers them all
    # within milliseconds, while even a warm box's pipeline takes most of a second.
    assert received[-1][0] - received[0][0] > 0.2
    assert any("trained" in line for line in lines), lines

    # NOTE: both features separate the training rows, so the rows predicted below sit on the
    # same side of either split (a tree may pick either feature).
    async with e2e_gateway.async_client() as client:
        pipeline = (await client.get(f"/pipelines/{pipeline_id}")).json()
        assert pipeline["status"] == "succeeded"
        assert pipeline["commit_sha"] == sha and pipeline["model_name"] == MODEL
        version = pipeline["model_version"]
        answer = await client.post(
            f"/models/{MODEL}/predict", json={"data": [[1.0, 2.0], [30.0, 31.0]]}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["version"] == version
        assert answer.json()["predictions"] == [0, 1]
        logs = (await client.get(f"/pipelines/{pipeline_id}/logs")).json()
        assert [x["line"] for x in logs["lines"]] == lines
