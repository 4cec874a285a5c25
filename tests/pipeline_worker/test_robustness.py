"""Timeouts, cancellation and a worker killed mid-run, against real worker processes.

No inference fleet here: these pipelines never reach `deploying`; the desired state of their
model is set beforehand and must come out untouched."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from redis.asyncio import Redis

from mlops_core import fleet_state, logstream, pipeline_queue
from mlops_core.fleet_state import DesiredModel
from tests.pipeline_worker.conftest import Platform
from tests.pipeline_worker.support import (
    NO_SKLEARN,
    contract_notebook,
    create_pipeline,
    enqueue,
    git_repo,
    wait_for_status,
)

FAST = {"MLOPS_EXECUTION_TIMEOUT_S": "6", "MLOPS_DEPLOY_TIMEOUT_S": "2"}
SLEEPER = dict(NO_SKLEARN, **{"mlops:training": "import time\ntime.sleep(120)"})
# Sleeps on its first attempt only, so the retry after the kill runs straight through.
SLEEP_ONCE = dict(
    NO_SKLEARN,
    **{
        "mlops:training": "import os, tempfile, time\n"
        "marker = os.path.join(tempfile.gettempdir(), f'mlops-kill-{PIPELINE_ID}')\n"
        "if not os.path.exists(marker):\n"
        "    open(marker, 'w').close()\n"
        "    time.sleep(5)\n"
    },
)


@pytest.fixture
async def redis(platform: Platform):
    client = Redis.from_url(platform.redis_url)
    yield client
    await client.aclose()


async def push(platform: Platform, tmp_path: Path, cells: dict[str, str], model: str) -> str:
    origin = tmp_path / f"origin-{model}"
    sha = git_repo(origin, {"train.ipynb": contract_notebook(cells, model)})
    pipeline_id = create_pipeline(platform.sessions, str(origin), sha)
    await enqueue(platform.redis_url, pipeline_id)
    return pipeline_id


async def wait_for_line(redis: Redis, pipeline_id: str, text: str, timeout_s: float = 60) -> None:
    for _ in range(int(timeout_s / 0.1)):
        if any(text in e.get("line", "") for e in await logstream.history(redis, pipeline_id)):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{text!r} not logged by {pipeline_id}")


@pytest.fixture(scope="module")
def worker(start_worker):
    return start_worker("fast", **FAST)


async def test_a_cell_past_the_timeout_fails_the_pipeline(worker, platform, redis, tmp_path):
    await fleet_state.set_desired(redis, "sleeper", DesiredModel("7", ["6"]))
    pipeline_id = await push(platform, tmp_path, SLEEPER, "sleeper")
    pipeline = await wait_for_status(platform.sessions, pipeline_id, timeout_s=90)
    assert (pipeline.status, pipeline.error_stage) == ("failed", "executing")
    assert pipeline.error_message == (
        "cell 3 (mlops:training) ran past the execution timeout of 6s per cell "
        "(MLOPS_EXECUTION_TIMEOUT_S)"
    )
    assert await fleet_state.get_desired_model(redis, "sleeper") == DesiredModel("7", ["6"])


async def test_cancel_stops_the_kernel(worker, platform, redis, mlflow_uri, tmp_path):
    pipeline_id = await push(platform, tmp_path, SLEEPER, "cancelled-model")
    await wait_for_line(redis, pipeline_id, "cell 3 (mlops:training) started")
    await pipeline_queue.request_cancel(redis, pipeline_id)
    pipeline = await wait_for_status(platform.sessions, pipeline_id, timeout_s=20)
    assert (pipeline.status, pipeline.error_stage) == ("cancelled", "executing")
    run = MlflowClient(tracking_uri=mlflow_uri).get_run(pipeline.mlflow_run_id)
    assert run.info.status == "KILLED"


async def test_a_killed_worker_leaves_no_pipeline_running(
    start_worker, worker, platform, redis, tmp_path
):
    pipeline_id = await push(platform, tmp_path, SLEEP_ONCE, "killed-model")
    await wait_for_line(redis, pipeline_id, "cell 3 (mlops:training) started")
    worker.kill()
    start_worker("fast-restarted", **FAST)
    pipeline = await wait_for_status(platform.sessions, pipeline_id, timeout_s=90)
    assert pipeline.attempts == 2
    assert "stopped during executing; retrying from the start (attempt 2 of 2)" in pipeline.log
    # The retry ran the notebook to its end (this one saves no model on purpose).
    assert (pipeline.status, pipeline.error_stage) == ("failed", "executing")
    assert "saved no model" in pipeline.error_message


async def test_recovery_retries_or_fails_pipelines_whose_worker_died(
    redis_url: str, mlflow_uri: str, tmp_path: Path
):
    """Recovery in-process, on its own database: a dead worker's pipeline is queued again
    while attempts remain (its lease names a process of this host that is gone), else failed."""
    import socket

    from arq.constants import job_key_prefix

    from mlops_core.db import Pipeline, make_engine, make_session_factory, session_scope
    from mlops_core.settings import Settings
    from pipeline_worker.deps import WorkerDeps
    from pipeline_worker.lease import lease_key
    from pipeline_worker.recovery import recover_orphans
    from pipeline_worker.sandbox.unboxed import Unboxed
    from tests.conftest import new_redis_db
    from tests.pipeline_worker.support import get_pipeline

    sessions = make_session_factory(make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    with session_scope(sessions) as session:
        retried = Pipeline(commit_sha="a" * 40, branch="main", status="executing", attempts=1)
        exhausted = Pipeline(commit_sha="b" * 40, branch="main", status="verifying", attempts=2)
        session.add_all([retried, exhausted])
        session.flush()
        retried_id, exhausted_id = retried.id, exhausted.id
    arq = await pipeline_queue.connect(new_redis_db(redis_url))
    dead = await asyncio.create_subprocess_exec("true")
    await dead.wait()
    await arq.set(lease_key(retried_id), f"{socket.gethostname()}-{dead.pid}")
    deps = WorkerDeps(
        settings=Settings(pipeline_max_attempts=2, data_dir=tmp_path),
        sessions=sessions,
        redis=arq,
        mlflow=MlflowClient(tracking_uri=mlflow_uri),
        sandbox=Unboxed(),
    )
    try:
        assert sorted(await recover_orphans(deps)) == sorted([retried_id, exhausted_id])
        assert get_pipeline(sessions, retried_id).status == "queued"
        assert await arq.exists(job_key_prefix + retried_id), "queued again for a worker"
        failed = get_pipeline(sessions, exhausted_id)
        assert (failed.status, failed.error_stage) == ("failed", "verifying")
        assert (
            "stopped during verifying (attempt 2 of 2); not retried again" in failed.error_message
        )
    finally:
        await arq.aclose()
