"""A pipeline's live log in Redis: a list holding the history and a channel for new lines.

Every entry is JSON: `{"seq": n, "ts": t, "line": text}` for a log line (seq counts from 1),
or `{"seq": n, "end": status}` once, when the pipeline reaches a terminal state. A watcher
subscribes first, then reads the history, then forwards live entries with a larger seq.
"""

from __future__ import annotations

import json
import time
from typing import Any

from redis.asyncio import Redis

LOG_TTL_S = 7 * 24 * 3600


def log_key(pipeline_id: str) -> str:
    return f"mlops:pipeline:{pipeline_id}:log"


def log_channel(pipeline_id: str) -> str:
    return f"mlops:pipeline:{pipeline_id}:live"


async def _push(redis: Redis, pipeline_id: str, entry: dict[str, Any]) -> int:
    # NOTE: the seq must be known before the entry is stored; a Lua script would do this in
    # one round trip, but a pipeline has a single writer (its worker job), so INCR is enough.
    seq = int(await redis.incr(log_key(pipeline_id) + ":seq"))
    entry = {"seq": seq, **entry}
    raw = json.dumps(entry)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.rpush(log_key(pipeline_id), raw)
        pipe.expire(log_key(pipeline_id), LOG_TTL_S)
        pipe.expire(log_key(pipeline_id) + ":seq", LOG_TTL_S)
        pipe.publish(log_channel(pipeline_id), raw)
        await pipe.execute()
    return seq


async def append_line(redis: Redis, pipeline_id: str, line: str) -> int:
    return await _push(redis, pipeline_id, {"ts": time.time(), "line": line})


async def mark_end(redis: Redis, pipeline_id: str, status: str) -> int:
    return await _push(redis, pipeline_id, {"end": status})


async def history(redis: Redis, pipeline_id: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in await redis.lrange(log_key(pipeline_id), 0, -1)]


def render(entries: list[dict[str, Any]]) -> str:
    """The plain-text log: one line per entry, end markers left out."""
    return "\n".join(e["line"] for e in entries if "line" in e)
