"""Starting, cancelling and reading pipelines: the database row first, then the arq job.

The gateway never runs pipeline work: it records a `queued` row and enqueues its id; the
pipeline worker does the rest.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway import git_remote, store
from gateway.deps import Resources
from gateway.github_events import PushEvent
from gateway.schemas import LogLine, PipelineLogs, PipelineOut, TriggeredPipeline
from mlops_core import logstream, pipeline_queue
from mlops_core.db import Pipeline, PipelineStatus
from mlops_core.errors import Conflict, ServiceUnavailable

log = logging.getLogger("gateway")


QUEUE_AWAY_NOTE = (
    "the job queue (Redis) is unreachable: the pipeline is recorded as queued and starts "
    "once the queue is back"
)
"""What a push or trigger answers beside its pipelines when they could not be queued yet."""


async def enqueue(resources: Resources, pipeline_ids: list[str]) -> str | None:
    """Queue the pipelines' jobs; None when done, `QUEUE_AWAY_NOTE` when Redis is away.

    NOTE: the rows are already committed as `queued`, and the database is the record of what
    must run: a job that cannot be queued now is queued by the sweep (`stranded_pipelines`)
    once Redis is back, so the caller hears 202 and nothing is lost, where a 503 would have
    left a row behind that a redelivery, deduplicated, could never start again.
    """
    for pipeline_id in pipeline_ids:
        try:
            await pipeline_queue.enqueue_pipeline(resources.arq, pipeline_id)
        except (RedisError, OSError) as exc:
            log.warning(
                "pipelines %s kept as queued, the job queue is unreachable (%s): they are "
                "queued when it is back",
                pipeline_ids,
                exc,
            )
            return QUEUE_AWAY_NOTE
    return None


async def enqueue_waiting(resources: Resources, pipeline_ids: list[str]) -> str | None:
    """Queue those of the pipelines still `queued` (a redelivered or re-sent push): a job
    that is waiting, running or has run is refused by its id, so this never runs one twice."""
    waiting = await resources.db(_still_queued, pipeline_ids)
    return await enqueue(resources, waiting) if waiting else None


def _still_queued(session: Session, pipeline_ids: list[str]) -> list[str]:
    return list(
        session.scalars(
            select(Pipeline.id).where(
                Pipeline.id.in_(pipeline_ids), Pipeline.status == PipelineStatus.QUEUED.value
            )
        )
    )


async def trigger(resources: Resources, repository_id: int) -> TriggeredPipeline:
    """Run the pipeline on the head of the registered branch, as a push would."""
    repo = await resources.db(store.get_repository, repository_id)
    sha = await git_remote.branch_head(
        repo.github_url, repo.branch, repo.github_token, resources.vault
    )
    pipeline = await resources.db(_create_manual, repository_id, sha)
    note = await enqueue(resources, [pipeline.id])
    return TriggeredPipeline.of(pipeline).model_copy(update={"note": note})


def _create_manual(session: Session, repository_id: int, sha: str) -> Pipeline:
    # Read again in this transaction: the repository may have been deleted meanwhile.
    return store.create_pipeline(
        session, store.get_repository(session, repository_id), sha, "manual"
    )


async def handle_push(
    resources: Resources, delivery_id: str | None, payload: Any
) -> tuple[store.DeliveryOutcome, str | None]:
    """Record a push and queue what it started; also the note `enqueue` gives."""
    push = PushEvent.parse(payload)
    outcome = await resources.db(_record_push, delivery_id, push)
    if outcome.replayed or outcome.duplicate_of:
        # NOTE: a delivery seen before still nudges its pipelines if they wait for the queue,
        # so a redelivery after an outage is never a silent no-op.
        note = await enqueue_waiting(resources, outcome.pipeline_ids + outcome.duplicate_of)
    else:
        note = None
    if not outcome.replayed:
        note = await enqueue(resources, outcome.pipeline_ids) or note
    log.info(
        "push %s to %s@%s %s: pipelines %s%s%s",
        delivery_id,
        push.full_name,
        push.branch,
        push.head_sha,
        outcome.pipeline_ids,
        " (replayed delivery)" if outcome.replayed else "",
        f", already started by an earlier delivery: {outcome.duplicate_of}"
        if outcome.duplicate_of
        else "",
    )
    return outcome, note


RECORD_ATTEMPTS = 3
"""Tries at recording a push whose delivery id or commit a concurrent delivery just took."""


def _record_push(
    session: Session, delivery_id: str | None, push: PushEvent
) -> store.DeliveryOutcome:
    for _ in range(RECORD_ATTEMPTS):
        if push.branch is None:
            matching = []
        else:
            repos = store.repositories_on_branch(session, push.branch)
            matching = [r for r in repos if push.is_for(r)]
        try:
            return store.record_delivery(
                session, delivery_id, [(r, push.head_sha) for r in matching]
            )
        except IntegrityError:
            # NOTE: two deliveries of one push at once both find nothing and both insert; the
            # database's keys let the first commit, the other's insert fails once that commit
            # is done, and the next attempt finds what it recorded.
            session.rollback()
    raise ServiceUnavailable(
        f"delivery {delivery_id} kept colliding with concurrent deliveries; redeliver it"
    )


async def cancel(resources: Resources, pipeline_id: str) -> tuple[PipelineOut, bool]:
    """Cancel a pipeline: at once when no worker has started it (True), otherwise by asking
    its worker to stop between stages or while the notebook runs (False)."""
    pipeline = await resources.db(store.get_pipeline, pipeline_id)
    if PipelineStatus(pipeline.status).terminal:
        raise Conflict(f"pipeline {pipeline_id} already ended: {pipeline.status}")
    # The flag goes first so a worker picking the job up right now skips it.
    try:
        await pipeline_queue.request_cancel(resources.redis, pipeline_id)
    except (RedisError, OSError) as exc:
        raise ServiceUnavailable(
            "the job queue (Redis) is unreachable, so the pipeline's worker cannot be told to "
            "stop: cancel again once it is back"
        ) from exc
    if await resources.db(store.cancel_if_queued, pipeline_id):
        await logstream.append_line(resources.redis, pipeline_id, "cancelled before it started")
        await logstream.mark_end(resources.redis, pipeline_id, PipelineStatus.CANCELLED.value)
        cancelled_now = True
    else:
        cancelled_now = False
    return PipelineOut.of(await resources.db(store.get_pipeline, pipeline_id)), cancelled_now


async def logs(resources: Resources, pipeline_id: str) -> PipelineLogs:
    """The log so far: the live list in Redis, or the copy kept in the database once the list
    has expired."""
    pipeline = await resources.db(store.get_pipeline, pipeline_id)
    entries = [e for e in await logstream.history(resources.redis, pipeline_id) if "line" in e]
    if entries:
        lines = [LogLine(seq=e["seq"], ts=e.get("ts"), line=e["line"]) for e in entries]
    else:
        lines = [
            LogLine(seq=i, ts=None, line=text)
            for i, text in enumerate((pipeline.log or "").splitlines(), start=1)
        ]
    return PipelineLogs(
        pipeline_id=pipeline.id,
        status=PipelineStatus(pipeline.status),
        lines=lines,
        text="\n".join(line.line for line in lines),
    )
