"""Pipelines: list, read, logs, cancel."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status
from redis.exceptions import RedisError

from gateway import pipeline_runs, store
from gateway.deps import Resources, ResourcesDep
from gateway.schemas import (
    PipelineLogs,
    PipelineOut,
    PipelinePage,
    PipelineRolloutOut,
    error_responses,
)
from mlops_core import rollouts, worker_heartbeat
from mlops_core.db import PipelineStatus

router = APIRouter(prefix="/pipelines", tags=["pipelines"])

PipelineId = Annotated[str, Path(min_length=1, max_length=64, description="Pipeline id")]
NOT_FOUND = (404, "pipeline '6f1c2a5e-8a39-4d59-9f0e-2b1d2f3c4d5e' not found")
NO_WORKER = "no live pipeline worker: it will start when one does"
QUEUE_AWAY = "the job queue (Redis) is unreachable: it will start once Redis is back"
LOOKUP_TIMEOUT_S = 3.0


@router.get("", response_model=PipelinePage)
async def list_pipelines(
    resources: ResourcesDep,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    size: Annotated[int, Query(ge=1, le=100)] = 20,
    repository_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    status: Annotated[PipelineStatus | None, Query()] = None,
) -> PipelinePage:
    """Pipelines, newest first, optionally of one repository or in one status."""
    items, total = await resources.db(store.list_pipelines, page, size, repository_id, status)
    shown = await _with_rollouts(
        resources, await _with_waiting_for(resources, [PipelineOut.of(p) for p in items])
    )
    return PipelinePage(items=shown, total=total, page=page, size=size)


@router.get("/{pipeline_id}", response_model=PipelineOut, responses=error_responses(NOT_FOUND))
async def get_pipeline(pipeline_id: PipelineId, resources: ResourcesDep) -> PipelineOut:
    """Status, stage, commit, timings, model name and version, error; for a queued pipeline,
    what it waits for when that is known (`waiting_for`)."""
    pipeline = PipelineOut.of(await resources.db(store.get_pipeline, pipeline_id))
    return (await _with_rollouts(resources, await _with_waiting_for(resources, [pipeline])))[0]


@router.get(
    "/{pipeline_id}/logs", response_model=PipelineLogs, responses=error_responses(NOT_FOUND)
)
async def get_logs(pipeline_id: PipelineId, resources: ResourcesDep) -> PipelineLogs:
    """The log so far (the WebSocket `/ws/pipelines/{id}/logs` follows it live)."""
    return await pipeline_runs.logs(resources, pipeline_id)


@router.post(
    "/{pipeline_id}/cancel",
    response_model=PipelineOut,
    responses={
        202: {"model": PipelineOut, "description": "Running: its worker was asked to stop"},
        **error_responses(NOT_FOUND, (409, "pipeline 6f1c... already ended: succeeded")),
    },
)
async def cancel(
    pipeline_id: PipelineId, resources: ResourcesDep, response: Response
) -> PipelineOut:
    """Cancel: at once (200) when still queued, else ask its worker to stop (202)."""
    pipeline, cancelled_now = await pipeline_runs.cancel(resources, pipeline_id)
    if not cancelled_now:
        response.status_code = status.HTTP_202_ACCEPTED
    return pipeline


async def _with_waiting_for(
    resources: Resources, pipelines: list[PipelineOut]
) -> list[PipelineOut]:
    """Queued pipelines say why none of them can start now: no worker is alive, or Redis
    (their queue, where workers announce themselves) does not answer."""
    if not any(p.status == PipelineStatus.QUEUED for p in pipelines):
        return pipelines
    try:
        workers = await asyncio.wait_for(
            worker_heartbeat.live_workers(resources.redis), LOOKUP_TIMEOUT_S
        )
    except (RedisError, OSError, TimeoutError):
        note: str | None = QUEUE_AWAY
    else:
        note = None if workers else NO_WORKER
    if note is None:
        return pipelines
    return [
        p.model_copy(update={"waiting_for": note}) if p.status == PipelineStatus.QUEUED else p
        for p in pipelines
    ]


async def _with_rollouts(resources: Resources, pipelines: list[PipelineOut]) -> list[PipelineOut]:
    """Pipelines whose version rolled out progressively say what became of it."""
    candidates = [p.id for p in pipelines if p.status in ROLLOUT_STATUSES]
    if not candidates:
        return pipelines
    rows = await asyncio.to_thread(rollouts.of_pipelines, resources.sessions, candidates)
    return [
        p.model_copy(update={"rollout": PipelineRolloutOut.of(rows[p.id])}) if p.id in rows else p
        for p in pipelines
    ]


ROLLOUT_STATUSES = frozenset(
    {
        PipelineStatus.DEPLOYING,
        PipelineStatus.SUCCEEDED,
        PipelineStatus.FAILED,
        PipelineStatus.CANCELLED,
    }
)
