"""Pipelines recorded as `queued` while Redis was away are queued once it is back, and nothing
that waits, runs or has run is queued twice: the sweep against a real redis-server stopped and
started again on the same port and a real SQLite database, then a real gateway and worker."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from arq.connections import ArqRedis
from arq.constants import result_key_prefix
from sqlalchemy.orm import Session, sessionmaker

from benchmarks.processes import ManagedProcess
from mlops_core import logstream, pipeline_queue
from mlops_core.db import (
    Pipeline,
    PipelineStatus,
    Repository,
    make_engine,
    make_session_factory,
    session_scope,
    utcnow,
)
from mlops_core.stranded_pipelines import REQUEUED_LINE, STRANDED_AFTER_S, enqueue_stranded
from pipeline_worker.probe import FRESH, NO_HEARTBEAT
from pipeline_worker.requeue import requeue_stranded
from tests.deploy.test_postgres import postgres_url  # noqa: F401 - a fixture, used by name
from tests.gateway.conftest import (
    gateway_env,
    launch_gateway,
    make_local_repo,
    queued_job_ids,
    signed_post,
)
from tests.pipeline_worker.support import NO_SKLEARN, contract_notebook, wait_for_status
from tests.pipeline_worker.test_probe import run_probe
from tests.support.restartable_redis import RestartableRedis


@pytest.fixture(scope="module")
def queue(run_dir: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(run_dir, f"requeue-redis-{uuid.uuid4().hex[:6]}").start()
    yield server
    server.stop()


@pytest.fixture
async def arq(queue: RestartableRedis) -> AsyncIterator[ArqRedis]:
    pool = await pipeline_queue.connect(queue.url)
    await pool.flushdb()
    yield pool
    await pool.aclose()


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    return make_session_factory(make_engine(f"sqlite:///{tmp_path / 'mlops.db'}"))


def add_pipelines(
    sessions: sessionmaker[Session], **statuses_and_ages: tuple[str, float]
) -> dict[str, str]:
    """One pipeline per name: (status, seconds since it was created); returns name → id."""
    with session_scope(sessions) as session:
        repo = Repository(
            github_url="file:///nowhere.git",
            full_name="/nowhere",
            branch="main",
            notebook_path="train.ipynb",
        )
        session.add(repo)
        session.flush()
        ids = {}
        for name, (status, age_s) in statuses_and_ages.items():
            pipeline = Pipeline(
                repository_id=repo.id,
                commit_sha="a" * 40,
                branch="main",
                status=status,
                created_at=utcnow() - timedelta(seconds=age_s),
            )
            session.add(pipeline)
            session.flush()
            ids[name] = pipeline.id
        return ids


async def test_the_sweep_queues_only_queued_pipelines_without_a_job(arq, sessions, queue):
    old = STRANDED_AFTER_S + 30
    ids = add_pipelines(
        sessions,
        stranded=("queued", old),
        just_recorded=("queued", 0),
        waiting=("queued", old),
        ran=("queued", old),
        succeeded=("succeeded", old),
        cancelled=("cancelled", old),
        running=("executing", old),
    )
    assert await pipeline_queue.enqueue_pipeline(arq, ids["waiting"])
    # A job arq finished keeps its result (keep_result): its id is never queued again.
    await arq.set(result_key_prefix + ids["ran"], b"done", ex=60)

    assert await enqueue_stranded(arq, sessions) == [ids["stranded"]]
    assert queued_job_ids(queue.url) == {ids["stranded"], ids["waiting"]}
    lines = [e["line"] for e in await logstream.history(arq, ids["stranded"]) if "line" in e]
    assert lines == [REQUEUED_LINE]
    assert await logstream.history(arq, ids["waiting"]) == []

    assert await enqueue_stranded(arq, sessions) == []
    assert queued_job_ids(queue.url) == {ids["stranded"], ids["waiting"]}


async def test_the_sweep_compares_ages_right_on_postgresql(
    arq, queue, request: pytest.FixtureRequest
):
    engine = make_engine(request.getfixturevalue("postgres_url"))
    try:
        sessions = make_session_factory(engine)
        ids = add_pipelines(
            sessions, stranded=("queued", STRANDED_AFTER_S + 2), fresh=("queued", 0)
        )
        assert await enqueue_stranded(arq, sessions) == [ids["stranded"]]
    finally:
        engine.dispose()


async def test_the_worker_sweep_waits_out_an_outage_and_queues_once_redis_is_back(
    arq, sessions, queue
):
    (stranded,) = add_pipelines(sessions, stranded=("queued", STRANDED_AFTER_S + 1)).values()
    ctx = {"deps": SimpleNamespace(redis=arq, sessions=sessions)}
    queue.stop()
    try:
        assert await requeue_stranded(ctx) == []
    finally:
        queue.start()
    assert await requeue_stranded(ctx) == [stranded]
    assert queued_job_ids(queue.url) == {stranded}


async def test_a_push_during_an_outage_runs_once_redis_is_back(
    queue: RestartableRedis, run_dir: Path, mlflow_uri: str, tmp_path: Path
):
    env = gateway_env(tmp_path, queue.url, MLFLOW_TRACKING_URI=mlflow_uri)
    gateway = launch_gateway(run_dir, f"requeue-gateway-{uuid.uuid4().hex[:6]}", env)
    worker = None
    try:
        local = make_local_repo(
            tmp_path / "git", "requeue", {"train.ipynb": contract_notebook(NO_SKLEARN, "rq")}
        )
        with gateway.client() as api:
            registered = api.post(
                "/repos", json={"github_url": local.url, "notebook_path": "train.ipynb"}
            )
            assert registered.status_code == 201, registered.text
            sha = local.commit({"train.ipynb": contract_notebook(NO_SKLEARN, "rq-2")})
            queue.stop()
            pushed = signed_post(api, local.push_payload(sha, modified=["train.ipynb"]))
        assert pushed.status_code == 202 and pushed.json()["note"], pushed.text
        (pipeline_id,) = pushed.json()["pipeline_ids"]

        queue.start()
        worker = ManagedProcess(
            f"requeue-worker-{uuid.uuid4().hex[:6]}",
            [sys.executable, "-m", "pipeline_worker"],
            run_dir,
            env={**env, "MLOPS_EXECUTION_TIMEOUT_S": "60", "MLOPS_DEPLOY_TIMEOUT_S": "2"},
        ).start()
        # The worker's sweep runs every 15 s; the pipeline itself in seconds.
        pipeline = await wait_for_status(gateway.sessions(), pipeline_id, timeout_s=150)
        assert pipeline.attempts == 1, worker.log_tail()
        assert pipeline.error_stage != PipelineStatus.QUEUED.value, pipeline.error_message
        assert REQUEUED_LINE in (pipeline.log or ""), pipeline.log

        # The worker's probe finds this live worker by its heartbeat, and no more once it
        # stopped.
        assert run_probe(queue.url, tmp_path).returncode == FRESH
        worker.stop()
        assert run_probe(queue.url, tmp_path).returncode == NO_HEARTBEAT
    finally:
        if worker is not None:
            worker.stop()
        gateway.process.stop()
