"""Follow a pipeline's log: the history, then live entries, until the end entry.

A watcher only reads (its own pub/sub subscription and the log list), so any number of
watchers, and watchers that vanish, cost the worker nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from mlops_core import logstream

# How often a watcher waiting for lines asks the database whether the pipeline ended without
# an end entry (a worker killed mid-run); bounded so a lost end never leaves a socket open.
END_CHECK_INTERVAL_S = 5.0

Entry = dict[str, Any]
TerminalStatus = Callable[[], Awaitable[tuple[str | None, str | None]]]
"""Answers (terminal status or None, final log kept in the database or None)."""


async def follow(
    redis: Redis, pipeline_id: str, terminal_status: TerminalStatus
) -> AsyncIterator[Entry]:
    pubsub = redis.pubsub()
    # NOTE: subscribe before reading the history, so no line falls between the two; lines
    # in both are told apart by seq.
    await pubsub.subscribe(logstream.log_channel(pipeline_id))
    try:
        last = 0
        for entry in await logstream.history(redis, pipeline_id):
            yield entry
            last = entry["seq"]
            if "end" in entry:
                return
        status, final_log = await terminal_status()
        while status is None:
            message = await pubsub.get_message(
                ignore_subscribe_messages=True, timeout=END_CHECK_INTERVAL_S
            )
            if message is None:
                status, final_log = await terminal_status()
                continue
            entry = json.loads(message["data"])
            if entry["seq"] <= last:
                continue
            yield entry
            last = entry["seq"]
            if "end" in entry:
                return
        async for entry in _finish(redis, pipeline_id, last, status, final_log):
            yield entry
    finally:
        await pubsub.aclose()


async def _finish(
    redis: Redis, pipeline_id: str, last: int, status: str, final_log: str | None
) -> AsyncIterator[Entry]:
    """The pipeline ended but no end entry reached us: send what the list holds now (or the
    log kept in the database when the list expired), then an end entry of our own."""
    entries = [e for e in await logstream.history(redis, pipeline_id) if e["seq"] > last]
    if not entries and last == 0 and final_log:
        entries = [
            {"seq": i, "ts": None, "line": line}
            for i, line in enumerate(final_log.splitlines(), start=1)
        ]
    for entry in entries:
        yield entry
        last = entry["seq"]
        if "end" in entry:
            return
    yield {"seq": last + 1, "end": status}
