"""Pipelines the database holds as `queued` but the job queue does not: queue them again.

The database is the record of what must run; Redis only carries the jobs. A pipeline whose
job never reached Redis (it was away when the gateway recorded it) or was lost with it (a
Redis restarted without persistence, a job key past its expiry) is queued again by this sweep,
which the workers run periodically and the gateway at its start.

Only `queued` rows are touched, and only after `STRANDED_AFTER_S`, so the gateway's own
enqueue right after its insert is never raced. Enqueueing is idempotent: the job id is the
pipeline id and arq refuses an id that has a job or a kept result, so a pipeline that is
waiting, running or has run is never queued twice.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from arq.connections import ArqRedis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mlops_core import logstream, pipeline_queue
from mlops_core.db import Pipeline, PipelineStatus, session_scope, utcnow

STRANDED_AFTER_S = 5.0
"""How old a `queued` row must be before the sweep looks at it: far more than the
milliseconds between the gateway's insert and its enqueue."""


REQUEUED_LINE = (
    "[queued] the job queue did not hold this pipeline (Redis was away or restarted): queued again"
)


def queued_before(sessions: sessionmaker[Session], min_age_s: float) -> list[str]:
    """Ids of pipelines `queued` for at least `min_age_s`, oldest first (blocking)."""
    cutoff = utcnow() - timedelta(seconds=min_age_s)
    with session_scope(sessions) as session:
        return list(
            session.scalars(
                select(Pipeline.id)
                .where(
                    Pipeline.status == PipelineStatus.QUEUED.value,
                    Pipeline.created_at <= cutoff,
                )
                .order_by(Pipeline.created_at)
            )
        )


async def enqueue_stranded(
    arq: ArqRedis, sessions: sessionmaker[Session], min_age_s: float = STRANDED_AFTER_S
) -> list[str]:
    """Queue every `queued` pipeline that has no job; returns the ids it queued. Redis errors
    propagate: the caller's next sweep tries again."""
    queued = []
    for pipeline_id in await asyncio.to_thread(queued_before, sessions, min_age_s):
        if await pipeline_queue.enqueue_pipeline(arq, pipeline_id):
            queued.append(pipeline_id)
            await logstream.append_line(arq, pipeline_id, REQUEUED_LINE, stage="queued")
    return queued
