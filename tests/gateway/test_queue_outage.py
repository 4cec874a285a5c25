"""A push or a trigger while Redis (the job queue) is away: a real gateway, a real redis-server
stopped and started again on the same port. The pipeline is kept as `queued` in the database,
the caller hears 202 and why it has not started, and nothing is lost once Redis is back."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from mlops_core.db import Pipeline, session_scope
from mlops_core.stranded_pipelines import STRANDED_AFTER_S
from tests.gateway.conftest import (
    API_KEY,
    Gateway,
    LocalRepo,
    gateway_env,
    launch_gateway,
    make_local_repo,
    queued_job_ids,
    signed_post,
)
from tests.support.restartable_redis import RestartableRedis

NOTEBOOK = "notebooks/train.ipynb"


@pytest.fixture(scope="module")
def queue(run_dir: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(run_dir, f"outage-redis-{uuid.uuid4().hex[:6]}").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("outage-gateway")


@pytest.fixture(scope="module")
def gateway(run_dir: Path, data_dir: Path, queue: RestartableRedis) -> Iterator[Gateway]:
    gw = launch_gateway(run_dir, "outage-gateway", gateway_env(data_dir, queue.url))
    yield gw
    gw.process.stop()


@pytest.fixture(scope="module")
def api(gateway: Gateway) -> Iterator[httpx.Client]:
    with gateway.client() as client:
        yield client


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, api: httpx.Client) -> tuple[LocalRepo, int]:
    local = make_local_repo(tmp_path_factory.mktemp("git"), "outage")
    response = api.post(
        "/repos", json={"github_url": local.url, "branch": "main", "notebook_path": NOTEBOOK}
    )
    assert response.status_code == 201, response.text
    return local, response.json()["id"]


def row(gateway: Gateway, pipeline_id: str) -> Pipeline:
    with session_scope(gateway.sessions()) as session:
        pipeline = session.get(Pipeline, pipeline_id)
        assert pipeline is not None
        session.expunge(pipeline)
        return pipeline


async def test_a_log_watcher_is_closed_with_4503_while_redis_is_away(
    gateway: Gateway, queue: RestartableRedis, repo: tuple[LocalRepo, int]
):
    _, repository_id = repo
    async with gateway.async_client() as client:
        triggered = await client.post(f"/repos/{repository_id}/trigger")
        assert triggered.status_code == 202, triggered.text
        pipeline_id = triggered.json()["id"]
        queue.stop()
        try:
            async with websockets.connect(
                f"{gateway.ws_url}/ws/pipelines/{pipeline_id}/logs",
                additional_headers={"Authorization": f"Bearer {API_KEY}"},
            ) as ws:
                with contextlib.suppress(websockets.ConnectionClosed):
                    await ws.recv()
            # 4000 + 503, the status REST answers when Redis is away.
            assert ws.close_code == 4503
            assert ws.close_reason is not None and "Redis" in ws.close_reason
        finally:
            queue.start()
            # Cancelled, so the next test's count of stranded pipelines is its own.
            cancelled = await client.post(f"/pipelines/{pipeline_id}/cancel")
            assert cancelled.status_code == 200, cancelled.text


def test_push_and_trigger_during_an_outage_are_kept_and_queued_when_redis_is_back(
    run_dir: Path,
    data_dir: Path,
    gateway: Gateway,
    api: httpx.Client,
    queue: RestartableRedis,
    repo: tuple[LocalRepo, int],
):
    local, repository_id = repo
    sha = local.commit({NOTEBOOK: '{"cells": [], "v": "outage"}'})
    payload = local.push_payload(sha, modified=[NOTEBOOK])
    delivery = str(uuid.uuid4())
    queue.stop()

    started = time.monotonic()
    pushed = signed_post(api, payload, delivery=delivery)
    assert time.monotonic() - started < 5, "a push must not wait long for a Redis that is away"
    assert pushed.status_code == 202, pushed.text
    body = pushed.json()
    (pipeline_id,) = body["pipeline_ids"]
    assert body["replayed"] is False and body["duplicate_of"] == []
    assert "queued" in body["note"] and "job queue" in body["note"], body
    assert "redis://" not in body["note"] and "127.0.0.1" not in body["note"]

    created = time.monotonic()
    triggered = api.post(f"/repos/{repository_id}/trigger")
    assert triggered.status_code == 202, triggered.text
    manual = triggered.json()
    assert manual["status"] == "queued" and manual["note"] == body["note"]

    # GitHub's "Redeliver", and the same push under a new delivery id: nothing new, nothing
    # dropped: they name the pipeline that is still waiting for the queue.
    redelivered = signed_post(api, payload, delivery=delivery)
    assert redelivered.status_code == 202, redelivered.text
    assert redelivered.json()["pipeline_ids"] == [pipeline_id]
    assert redelivered.json()["replayed"] is True and "note" in redelivered.json()
    resent = signed_post(api, payload)
    assert resent.status_code == 202, resent.text
    assert resent.json()["duplicate_of"] == [pipeline_id] and "note" in resent.json()

    for waiting in (pipeline_id, manual["id"]):
        pipeline = row(gateway, waiting)
        assert pipeline.status == "queued", (pipeline.status, pipeline.error_message)
        assert pipeline.error_message is None and pipeline.finished_at is None

    # Redis comes back empty. The same delivery sent again now queues its waiting pipeline
    # at once; the manual one waits for a sweep (a worker's, or a gateway's at its start).
    queue.start()
    again = signed_post(api, payload, delivery=delivery)
    assert again.status_code == 202 and "note" not in again.json(), again.text
    assert queued_job_ids(queue.url) == {pipeline_id}

    # The sweep leaves rows younger than STRANDED_AFTER_S to the gateway that wrote them.
    time.sleep(max(0.0, STRANDED_AFTER_S - (time.monotonic() - created)))
    gateway.process.stop()
    restarted = launch_gateway(run_dir, "outage-gateway-restarted", gateway.env)
    try:
        assert queued_job_ids(queue.url) == {pipeline_id, manual["id"]}
        assert row(gateway, manual["id"]).status == "queued"

        # And a push once Redis is back is queued as before, with no note.
        with restarted.client() as client:
            sha = local.commit({NOTEBOOK: '{"cells": [], "v": "after"}'})
            after = signed_post(client, local.push_payload(sha, modified=[NOTEBOOK]))
        assert after.status_code == 202 and "note" not in after.json(), after.text
        assert set(after.json()["pipeline_ids"]) <= queued_job_ids(queue.url)
    finally:
        restarted.process.stop()
