"""A running pipeline's lease in Redis: present while a live worker runs it.

A pipeline whose status says running but whose lease has expired was left behind by a worker
that died; `recovery.py` retries or fails it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from redis.asyncio import Redis

LEASE_TTL_S = 30.0
# Refreshed well inside the TTL so a busy event loop does not lose it.
LEASE_REFRESH_S = 5.0


def lease_key(pipeline_id: str) -> str:
    return f"mlops:pipeline:{pipeline_id}:lease"


async def held(redis: Redis, pipeline_id: str) -> bool:
    return bool(await redis.exists(lease_key(pipeline_id)))


@contextlib.asynccontextmanager
async def lease(redis: Redis, pipeline_id: str, owner: str) -> AsyncIterator[None]:
    key = lease_key(pipeline_id)
    await redis.set(key, owner, px=int(LEASE_TTL_S * 1000))

    async def refresh() -> None:
        while True:
            await asyncio.sleep(LEASE_REFRESH_S)
            await redis.set(key, owner, px=int(LEASE_TTL_S * 1000))

    task = asyncio.create_task(refresh())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await redis.delete(key)
