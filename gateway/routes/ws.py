"""`/ws/pipelines/{id}/logs`: the log so far, then each new line, then close at the end."""

from __future__ import annotations

import asyncio
import contextlib
import json

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from gateway import store
from gateway.deps import bearer_token, check_api_key, get_resources
from gateway.log_follow import follow
from mlops_core.db import PipelineStatus
from mlops_core.errors import MlopsError, NotFound

router = APIRouter(tags=["pipelines"])

# Close codes in the application range (4000-4999) mirror the HTTP statuses.
CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_FOUND = 4404


@router.websocket("/ws/pipelines/{pipeline_id}/logs")
async def pipeline_logs(websocket: WebSocket, pipeline_id: str) -> None:
    """Each message is one JSON log entry: `{"seq", "ts", "line"}`, and last `{"seq", "end"}`
    with the final status. Needs `Authorization: Bearer <MLOPS_API_KEY>` when a key is set."""
    resources = await get_resources(websocket)
    await websocket.accept()
    try:
        check_api_key(resources.settings, bearer_token(websocket.headers.get("authorization")))
        await resources.db(store.get_pipeline, pipeline_id)
    except MlopsError as exc:
        code = CLOSE_NOT_FOUND if isinstance(exc, NotFound) else CLOSE_UNAUTHORIZED
        await websocket.close(code=code, reason=exc.message[:120])
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
        with contextlib.suppress(WebSocketDisconnect):
            sender.result()
            await websocket.close(code=1000)
