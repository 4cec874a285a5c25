"""`/ws/pipelines/{id}/logs`: the log so far, then each new line, then close at the end."""

from __future__ import annotations

import asyncio
import contextlib
import json

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from gateway import store
from gateway.deps import bearer_token, check_api_key, get_resources
from gateway.errors import client_error
from gateway.log_follow import follow
from mlops_core.db import PipelineStatus
from mlops_core.errors import MlopsError

router = APIRouter(tags=["pipelines"])

CLOSE_CODE_BASE = 4000
KEY_MESSAGE_PROTOCOL = "mlops.key-message"
"""The subprotocol a browser asks for to send the API key as its first message: browsers
cannot set headers on a WebSocket, and a key in the URL would end up in access logs."""
KEY_MESSAGE_TIMEOUT_S = 10.0
MAX_REASON_BYTES = 123
"""A close frame's reason is at most 123 bytes of UTF-8."""


def close_code(error: MlopsError) -> int:
    """The WebSocket close code for an error: 4000 + the HTTP status REST answers for it, in
    the range (4000-4999) the protocol leaves to applications. So 4401 missing or wrong API key,
    4404 no such pipeline, 4503 Redis (the log stream) away, 4500 a fault of the gateway's;
    1000 stays the normal close once the pipeline ended."""
    return CLOSE_CODE_BASE + error.http_status


async def close_with(websocket: WebSocket, exc: BaseException) -> None:
    error = client_error(websocket, exc)
    reason = error.message.encode()[:MAX_REASON_BYTES].decode(errors="ignore")
    await websocket.close(code=close_code(error), reason=reason)


async def key_message(websocket: WebSocket) -> str | None:
    """The first message's text, the key (empty when the gateway has none); None when none
    came in time."""
    try:
        message = await asyncio.wait_for(websocket.receive(), KEY_MESSAGE_TIMEOUT_S)
    except TimeoutError:
        return None
    return message.get("text") or None


@router.websocket("/ws/pipelines/{pipeline_id}/logs")
async def pipeline_logs(websocket: WebSocket, pipeline_id: str) -> None:
    """Each message is one JSON log entry: `{"seq", "ts", "line"}`, and last `{"seq", "end"}`
    with the final status. Needs `Authorization: Bearer <MLOPS_API_KEY>` when a key is set,
    or (browsers) the subprotocol `mlops.key-message` and the key as the first message."""
    resources = await get_resources(websocket)
    by_message = KEY_MESSAGE_PROTOCOL in websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=KEY_MESSAGE_PROTOCOL if by_message else None)
    try:
        if by_message:
            presented: str | None = await key_message(websocket)
        else:
            presented = bearer_token(websocket.headers.get("authorization"))
        check_api_key(resources.settings, presented)
        await resources.db(store.get_pipeline, pipeline_id)
    except Exception as exc:
        await close_with(websocket, exc)
        return

    async def terminal_status() -> tuple[str | None, str | None]:
        pipeline = await resources.db(store.get_pipeline, pipeline_id)
        ended = PipelineStatus(pipeline.status).terminal
        return (pipeline.status, pipeline.log) if ended else (None, None)

    async def forward() -> None:
        async for entry in follow(resources.redis, pipeline_id, terminal_status):
            await websocket.send_text(json.dumps(entry))

    async def until_disconnect() -> None:
        # Watchers send nothing that matters; reading is how a departure is noticed at once.
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    sender = asyncio.create_task(forward())
    listener = asyncio.create_task(until_disconnect())
    try:
        done, _ = await asyncio.wait({sender, listener}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, listener):
            task.cancel()
        await asyncio.gather(sender, listener, return_exceptions=True)
    if sender in done:
        failure = sender.exception()
        if isinstance(failure, WebSocketDisconnect):
            return
        with contextlib.suppress(WebSocketDisconnect):
            if failure is None:
                await websocket.close(code=1000)
            else:  # Redis away while following: 4503
                await close_with(websocket, failure)
