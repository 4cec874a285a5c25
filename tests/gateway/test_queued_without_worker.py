"""A queued pipeline with no live worker says so, and `/ready` names the missing worker; a
real worker then starts it, and both say so."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.processes import ManagedProcess
from gateway.routes.pipelines import NO_WORKER
from tests.conftest import new_redis_db
from tests.gateway.conftest import Gateway, gateway_env, launch_gateway, make_local_repo


@pytest.fixture(scope="module")
def lone_gateway(
    run_dir: Path, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[Gateway]:
    """A gateway on a Redis database of its own, where no worker has ever run."""
    env = gateway_env(tmp_path_factory.mktemp("gateway-lone"), new_redis_db(redis_url))
    gw = launch_gateway(run_dir, "gateway-lone", env)
    yield gw
    gw.process.stop()


def wait_for(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_a_queued_pipeline_waits_for_a_worker_until_one_starts(
    lone_gateway: Gateway, run_dir: Path, tmp_path: Path
):
    repo = make_local_repo(tmp_path, "waits-for-worker")
    with lone_gateway.client() as api:
        body = {"github_url": repo.url, "branch": "main", "notebook_path": "notebooks/train.ipynb"}
        repo_id = api.post("/repos", json=body).json()["id"]
        pipeline_id = api.post(f"/repos/{repo_id}/trigger").json()["id"]

        shown = api.get(f"/pipelines/{pipeline_id}").json()
        assert (shown["status"], shown["waiting_for"]) == ("queued", NO_WORKER)
        listed = api.get("/pipelines").json()["items"]
        assert [p["waiting_for"] for p in listed if p["id"] == pipeline_id] == [NO_WORKER]
        ready = httpx.get(f"{lone_gateway.url}/ready", timeout=10)
        assert ready.status_code == 503
        assert "workers" in ready.json()["detail"].removeprefix("not ready: ").split(", ")
        assert ready.json()["checks"]["workers"] == "no live pipeline worker"

        env = lone_gateway.env
        worker = ManagedProcess(
            f"worker-lone-{time.monotonic_ns()}",
            [sys.executable, "-m", "pipeline_worker"],
            run_dir,
            env={
                key: env[key]
                for key in ("MLOPS_DATA_DIR", "DATABASE_URL", "REDIS_URL", "MLFLOW_TRACKING_URI")
            }
            | {"MLOPS_ALLOW_LOCAL_REPOS": "true"},
        ).start()
        try:
            wait_for(
                lambda: api.get(f"/pipelines/{pipeline_id}").json()["status"] != "queued",
                90,
                f"the worker did not start the pipeline:\n{worker.log_tail()}",
            )
            started = api.get(f"/pipelines/{pipeline_id}").json()
            assert started["waiting_for"] is None
            checks = httpx.get(f"{lone_gateway.url}/ready", timeout=10).json()["checks"]
            assert checks["workers"].startswith("ok: 1 live workers ("), checks["workers"]
        finally:
            worker.stop()
