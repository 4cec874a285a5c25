"""The worker's periodic sweep: pipelines the database holds as `queued` whose job Redis
does not have (never received, or lost with a restarted Redis) are queued again, so a push
recorded while Redis was away runs once it is back. See `mlops_core.stranded_pipelines`."""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError

from mlops_core.stranded_pipelines import enqueue_stranded
from pipeline_worker.deps import WorkerDeps

logger = logging.getLogger(__name__)


async def requeue_stranded(ctx: dict[str, Any]) -> list[str]:
    """arq cron job: queue the stranded pipelines; returns their ids."""
    deps: WorkerDeps = ctx["deps"]
    try:
        queued = await enqueue_stranded(deps.redis, deps.sessions)
    except (RedisError, OSError) as exc:
        logger.warning("stranded pipelines not swept: Redis is away (%s)", exc)
        return []
    if queued:
        logger.warning("queued again pipelines Redis did not hold: %s", ", ".join(queued))
    return queued
