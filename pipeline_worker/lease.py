"""A running pipeline's lease in Redis: present while a live worker runs it.

A pipeline whose status says running but whose lease has expired, or whose lease names a
process on this host that no longer exists, was left behind by a worker that died;
`recovery.py` retries or fails it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

LEASE_TTL_S = 30.0
# Refreshed well inside the TTL so a busy event loop does not lose it.
LEASE_REFRESH_S = 5.0


def lease_key(pipeline_id: str) -> str:
    return f"mlops:pipeline:{pipeline_id}:lease"


def owner_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


async def held_by_live_worker(redis: Redis, pipeline_id: str) -> bool:
    """True unless the lease expired or names a dead process of this host (known at once,
    where an expiry would take up to LEASE_TTL_S)."""
    raw = await redis.get(lease_key(pipeline_id))
    if raw is None:
        return False
    host, _, pid = (raw.decode() if isinstance(raw, bytes) else raw).rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.asynccontextmanager
async def lease(redis: Redis, pipeline_id: str, owner: str) -> AsyncIterator[None]:
    key = lease_key(pipeline_id)
    await redis.set(key, owner, px=int(LEASE_TTL_S * 1000))

    async def refresh() -> None:
        while True:
            await asyncio.sleep(LEASE_REFRESH_S)
            # NOTE: Redis away for a moment must not end the refreshing: the lease would then
            # expire while the pipeline still runs, and recovery would start it a second time.
            try:
                await redis.set(key, owner, px=int(LEASE_TTL_S * 1000))
            except (RedisError, OSError) as exc:
                logger.warning("lease of pipeline %s not refreshed: %s", pipeline_id, exc)

    task = asyncio.create_task(refresh())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # Redis away: the lease expires by itself, and the pipeline's outcome stands.
        with contextlib.suppress(RedisError, OSError):
            await redis.delete(key)
