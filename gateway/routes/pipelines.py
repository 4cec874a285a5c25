"""Pipelines: list, read, logs, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from gateway import pipeline_runs, store
from gateway.deps import ResourcesDep
from gateway.schemas import PipelineLogs, PipelineOut, PipelinePage, error_responses
from mlops_core.db import PipelineStatus

router = APIRouter(prefix="/pipelines", tags=["pipelines"])

PipelineId = Annotated[str, Path(min_length=1, max_length=64, description="Pipeline id")]
NOT_FOUND = (404, "pipeline '6f1c2a5e-8a39-4d59-9f0e-2b1d2f3c4d5e' not found")


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
    return PipelinePage(items=[PipelineOut.of(p) for p in items], total=total, page=page, size=size)


@router.get("/{pipeline_id}", response_model=PipelineOut, responses=error_responses(NOT_FOUND))
async def get_pipeline(pipeline_id: PipelineId, resources: ResourcesDep) -> PipelineOut:
    """Status, stage, commit, timings, model name and version, error."""
    return PipelineOut.of(await resources.db(store.get_pipeline, pipeline_id))


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
