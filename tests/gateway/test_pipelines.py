"""Pipelines: listing, details, logs, cancel, and the WebSocket log stream (fed here by
writing to the log stream as a worker does, so every step is deterministic)."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import pytest
import websockets
from redis.asyncio import Redis
from sqlalchemy import update

from gateway.routes.ws import KEY_MESSAGE_PROTOCOL
from mlops_core import logstream, pipeline_queue
from mlops_core.db import Pipeline, session_scope
from tests.gateway.conftest import API_KEY, Gateway, LocalRepo, make_local_repo


@pytest.fixture(scope="module")
def repo_id(tmp_path_factory: pytest.TempPathFactory, api: httpx.Client) -> int:
    local: LocalRepo = make_local_repo(tmp_path_factory.mktemp("git"), "pipelines-test")
    response = api.post(
        "/repos",
        json={"github_url": local.url, "branch": "main", "notebook_path": "notebooks/train.ipynb"},
    )
    return response.json()["id"]


@pytest.fixture
async def redis(gateway: Gateway):
    client = Redis.from_url(gateway.redis_url)
    yield client
    await client.aclose()


def set_status(gateway: Gateway, pipeline_id: str, status: str, **fields) -> None:
    with session_scope(gateway.sessions()) as session:
        session.execute(
            update(Pipeline).where(Pipeline.id == pipeline_id).values(status=status, **fields)
        )


def new_pipeline(api: httpx.Client, repo_id: int) -> str:
    response = api.post(f"/repos/{repo_id}/trigger")
    assert response.status_code == 202, response.text
    return response.json()["id"]


async def new_pipeline_async(aapi: httpx.AsyncClient, repo_id: int) -> str:
    response = await aapi.post(f"/repos/{repo_id}/trigger")
    assert response.status_code == 202, response.text
    return response.json()["id"]


def ws_connect(gateway: Gateway, pipeline_id: str, key: str | None = API_KEY):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return websockets.connect(
        f"{gateway.ws_url}/ws/pipelines/{pipeline_id}/logs", additional_headers=headers
    )


def ws_connect_key_message(gateway: Gateway, pipeline_id: str):
    """As a browser does: no header, the subprotocol saying the key comes as first message."""
    return websockets.connect(
        f"{gateway.ws_url}/ws/pipelines/{pipeline_id}/logs",
        subprotocols=[websockets.Subprotocol(KEY_MESSAGE_PROTOCOL)],
    )


async def receive_all(ws) -> list[dict]:
    return [json.loads(m) async for m in ws]


async def close_code(ws) -> int | None:
    with contextlib.suppress(websockets.ConnectionClosed):
        await ws.recv()
    return ws.close_code


def test_list_pages_newest_first_and_filters(api: httpx.Client, gateway: Gateway, repo_id: int):
    ids = [new_pipeline(api, repo_id) for _ in range(3)]
    set_status(gateway, ids[0], "failed", error_stage="validating", error_message="no tags")
    page = api.get("/pipelines", params={"repository_id": repo_id, "size": 2}).json()
    assert page["total"] >= 3 and page["page"] == 1 and page["size"] == 2
    assert [p["id"] for p in page["items"]] == [ids[2], ids[1]]
    page2 = api.get("/pipelines", params={"repository_id": repo_id, "size": 2, "page": 2}).json()
    assert ids[0] in [p["id"] for p in page2["items"]]
    failed = api.get("/pipelines", params={"repository_id": repo_id, "status": "failed"}).json()
    assert [p["id"] for p in failed["items"]] == [ids[0]]
    assert failed["items"][0]["error"] == {"stage": "validating", "message": "no tags"}
    assert failed["items"][0]["stage"] == "validating"
    for params, message in (
        ({"status": "bogus"}, "query.status: Input should be 'queued'"),
        ({"page": 0}, "query.page: Input should be greater than or equal to 1"),
        ({"size": 101}, "query.size: Input should be less than or equal to 100"),
        ({"repository_id": "x"}, "query.repository_id: Input should be a valid integer"),
    ):
        response = api.get("/pipelines", params=params)
        assert response.status_code == 422
        assert response.json()["detail"].startswith(message)
    for pipeline_id in ids[1:]:
        api.post(f"/pipelines/{pipeline_id}/cancel")


def test_pipeline_details_and_not_found(api: httpx.Client, repo_id: int):
    pipeline_id = new_pipeline(api, repo_id)
    body = api.get(f"/pipelines/{pipeline_id}").json()
    assert body["status"] == "queued" and body["stage"] is None and body["error"] is None
    for key in ("commit_sha", "stage_timings", "model_name", "model_version", "created_at"):
        assert key in body
    response = api.get("/pipelines/nope")
    assert response.status_code == 404
    assert response.json() == {"detail": "pipeline 'nope' not found"}
    api.post(f"/pipelines/{pipeline_id}/cancel")


async def test_cancel_queued_at_once_and_running_by_request(
    aapi: httpx.AsyncClient, gateway: Gateway, repo_id: int, redis: Redis
):
    queued = await new_pipeline_async(aapi, repo_id)
    response = await aapi.post(f"/pipelines/{queued}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert await pipeline_queue.cancel_requested(redis, queued)
    again = await aapi.post(f"/pipelines/{queued}/cancel")
    assert again.status_code == 409
    assert again.json()["detail"] == f"pipeline {queued} already ended: cancelled"
    log = (await aapi.get(f"/pipelines/{queued}/logs")).json()
    assert log["text"] == "cancelled before it started"

    running = await new_pipeline_async(aapi, repo_id)
    set_status(gateway, running, "executing")
    response = await aapi.post(f"/pipelines/{running}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "executing" and response.json()["stage"] == "executing"
    assert await pipeline_queue.cancel_requested(redis, running)
    assert (await aapi.post("/pipelines/nope/cancel")).status_code == 404
    set_status(gateway, running, "cancelled")


async def test_websocket_sends_history_then_live_lines_then_closes(
    aapi: httpx.AsyncClient, gateway: Gateway, repo_id: int, redis: Redis
):
    pipeline_id = await new_pipeline_async(aapi, repo_id)
    set_status(gateway, pipeline_id, "cloning")
    await logstream.append_line(redis, pipeline_id, "[cloning] first")
    await logstream.append_line(redis, pipeline_id, "[cloning] second")
    async with ws_connect(gateway, pipeline_id) as ws, ws_connect(gateway, pipeline_id) as other:
        for watcher in (ws, other):
            history = [json.loads(await watcher.recv()) for _ in range(2)]
            assert [e["line"] for e in history] == ["[cloning] first", "[cloning] second"]
        await logstream.append_line(redis, pipeline_id, "[executing] live")
        live = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert live["line"] == "[executing] live" and live["seq"] == 3
        set_status(gateway, pipeline_id, "succeeded")
        await logstream.mark_end(redis, pipeline_id, "succeeded")
        rest = await asyncio.wait_for(receive_all(ws), 5)
        assert rest == [{"seq": 4, "end": "succeeded"}]
        assert ws.close_code == 1000
        assert [e.get("line", e.get("end")) for e in await receive_all(other)] == [
            "[executing] live",
            "succeeded",
        ]
    # An ended pipeline: everything at once, then close.
    async with ws_connect(gateway, pipeline_id) as ws:
        entries = await asyncio.wait_for(receive_all(ws), 5)
    assert [e["seq"] for e in entries] == [1, 2, 3, 4] and entries[-1]["end"] == "succeeded"
    logs = (await aapi.get(f"/pipelines/{pipeline_id}/logs")).json()
    assert logs["status"] == "succeeded" and [x["seq"] for x in logs["lines"]] == [1, 2, 3]


async def test_websocket_after_a_print_bomb_sends_head_gap_tail_and_end(
    aapi: httpx.AsyncClient, gateway: Gateway, repo_id: int, redis: Redis
):
    pipeline_id = await new_pipeline_async(aapi, repo_id)
    set_status(gateway, pipeline_id, "executing")
    await logstream.append_line(redis, pipeline_id, "[executing] started", stage="executing")
    printed = [f"[executing] cell 1 | {i}" for i in range(25_000)]
    async with ws_connect(gateway, pipeline_id) as live:
        assert json.loads(await live.recv())["line"] == "[executing] started"
        await logstream.append_lines(redis, pipeline_id, printed, output=True, stage="executing")
        final = "[executing] pipeline failed at executing: boom"
        await logstream.append_line(redis, pipeline_id, final, stage="executing")
        set_status(gateway, pipeline_id, "failed")
        await logstream.mark_end(redis, pipeline_id, "failed")
        seen = await asyncio.wait_for(receive_all(live), 60)
    # Live: every line as it was written, then the end.
    assert [e.get("line", e.get("end")) for e in seen] == [*printed, final, "failed"]
    # Late: the first 2,000 and the last 5,000 lines, with the gap between them said.
    gap = (
        "[executing] 18,001 lines were dropped here (a pipeline's log keeps the first 2,000 "
        "lines of notebook output and the last 5,000 lines)"
    )
    kept = ["[executing] started", *printed[:2_000], gap, *printed[20_001:], final]
    async with ws_connect(gateway, pipeline_id) as late:
        history = await asyncio.wait_for(receive_all(late), 30)
    assert [e.get("line", e.get("end")) for e in history] == [*kept, "failed"]
    assert history[-1] == {"seq": 25_003, "end": "failed"}
    logs = (await aapi.get(f"/pipelines/{pipeline_id}/logs")).json()
    assert logs["text"] == "\n".join(kept)


async def test_websocket_for_an_ended_pipeline_without_an_end_entry(
    aapi: httpx.AsyncClient, gateway: Gateway, repo_id: int
):
    pipeline_id = await new_pipeline_async(aapi, repo_id)
    # As when the Redis list has expired: the final log is in the database only.
    set_status(gateway, pipeline_id, "failed", log="line one\nline two")
    async with ws_connect(gateway, pipeline_id) as ws:
        entries = await asyncio.wait_for(receive_all(ws), 5)
    assert entries == [
        {"seq": 1, "ts": None, "line": "line one"},
        {"seq": 2, "ts": None, "line": "line two"},
        {"seq": 3, "end": "failed"},
    ]
    assert (await aapi.get(f"/pipelines/{pipeline_id}/logs")).json()["text"] == "line one\nline two"


async def test_websocket_refusals_and_departing_watchers(
    aapi: httpx.AsyncClient, gateway: Gateway, repo_id: int, redis: Redis
):
    async with ws_connect(gateway, "nope") as ws:
        assert await close_code(ws) == 4404
    pipeline_id = await new_pipeline_async(aapi, repo_id)
    for key in (None, "wrong"):
        async with ws_connect(gateway, pipeline_id, key=key) as ws:
            assert await close_code(ws) == 4401
    # Browsers: the key as the first message, under the subprotocol that says so.
    for key, code in ((API_KEY, None), ("wrong", 4401), ("", 4401)):
        async with ws_connect_key_message(gateway, pipeline_id) as ws:
            assert ws.subprotocol == KEY_MESSAGE_PROTOCOL
            await ws.send(key)
            if code is None:
                await logstream.append_line(redis, pipeline_id, "by message")
                assert "by message" in json.loads(await asyncio.wait_for(ws.recv(), 5))["line"]
            else:
                assert await close_code(ws) == code
    channel = logstream.log_channel(pipeline_id)
    for _ in range(5):
        async with ws_connect(gateway, pipeline_id) as ws:
            await logstream.append_line(redis, pipeline_id, "hello")
            await ws.recv()
    # Watchers that left hold no subscription: the writer publishes to nobody.
    for _ in range(50):
        if (await redis.pubsub_numsub(channel))[0][1] == 0:
            break
        await asyncio.sleep(0.1)
    assert (await redis.pubsub_numsub(channel))[0][1] == 0
    await aapi.post(f"/pipelines/{pipeline_id}/cancel")
