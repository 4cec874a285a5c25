"""Pipeline workers' heartbeats in Redis: who is alive and whether it can box pushed code.

Each worker refreshes `mlops:worker:<id>` (JSON, with a TTL) while it runs; the gateway's
`/ready` reads them. A key that does not parse is skipped, never trusted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from redis.asyncio import Redis

KEY_PREFIX = "mlops:worker:"
INTERVAL_S = 5.0
TTL_S = 15


@dataclass(frozen=True)
class WorkerBeat:
    worker_id: str
    sandbox: str
    sandbox_problem: str | None
    """Why this worker cannot make a sandbox (its pipelines fail), or None."""


async def beat(redis: Redis, worker: WorkerBeat) -> None:
    await redis.set(KEY_PREFIX + worker.worker_id, json.dumps(asdict(worker)), ex=TTL_S)


async def forget(redis: Redis, worker_id: str) -> None:
    await redis.delete(KEY_PREFIX + worker_id)


async def live_workers(redis: Redis) -> list[WorkerBeat]:
    keys = [key async for key in redis.scan_iter(match=KEY_PREFIX + "*", count=100)]
    beats: list[WorkerBeat] = []
    for raw in await redis.mget(keys) if keys else []:
        try:
            fields = json.loads(raw)
            beats.append(
                WorkerBeat(
                    worker_id=str(fields["worker_id"]),
                    sandbox=str(fields["sandbox"]),
                    sandbox_problem=(
                        None
                        if fields["sandbox_problem"] is None
                        else str(fields["sandbox_problem"])
                    ),
                )
            )
        except (TypeError, ValueError, KeyError):
            continue
    return beats
