"""The worker's reads and writes of `Pipeline` rows (blocking; callers use a thread)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mlops_core.db import STAGES, Pipeline, PipelineStatus, Repository, session_scope, utcnow


@dataclass(frozen=True)
class PipelineJob:
    """What one run needs from the database, read once at its start."""

    id: str
    status: str
    commit_sha: str
    branch: str
    github_url: str | None
    notebook_path: str | None
    github_token: str | None
    """As stored: sealed (see `mlops_core.token_vault`); only the clone stage opens it."""
    repository: str | None
    """`owner/name` (or the local path) for MLflow tags and logs."""


def load(sessions: sessionmaker[Session], pipeline_id: str) -> PipelineJob | None:
    with session_scope(sessions) as session:
        pipeline = session.get(Pipeline, pipeline_id)
        if pipeline is None:
            return None
        repo = session.get(Repository, pipeline.repository_id) if pipeline.repository_id else None
        return PipelineJob(
            id=pipeline.id,
            status=pipeline.status,
            commit_sha=pipeline.commit_sha or "",
            branch=pipeline.branch or (repo.branch if repo else ""),
            github_url=repo.github_url if repo else None,
            notebook_path=repo.notebook_path if repo else None,
            github_token=repo.github_token if repo else None,
            repository=repo.full_name if repo else None,
        )


def update(sessions: sessionmaker[Session], pipeline_id: str, **fields: Any) -> None:
    with session_scope(sessions) as session:
        pipeline = session.get(Pipeline, pipeline_id)
        if pipeline is not None:
            for name, value in fields.items():
                setattr(pipeline, name, value)


def begin_attempt(sessions: sessionmaker[Session], pipeline_id: str) -> tuple[int, float]:
    """Count a new attempt and clear what an earlier one left; returns the attempt number and
    the seconds the pipeline waited since it was created (its `queued` timing)."""
    with session_scope(sessions) as session:
        pipeline = session.get(Pipeline, pipeline_id)
        if pipeline is None:
            return 0, 0.0
        now = utcnow()
        created = pipeline.created_at
        if created.tzinfo is None:  # NOTE: SQLite keeps no time zone; we store UTC
            created = created.replace(tzinfo=UTC)
        queued = round(max((now - created).total_seconds(), 0.0), 3)
        pipeline.attempts = (pipeline.attempts or 0) + 1
        pipeline.started_at = now
        pipeline.error_stage = None
        pipeline.error_message = None
        pipeline.stage_timings = {PipelineStatus.QUEUED.value: queued}
        pipeline.model_version = None
        return pipeline.attempts, queued


def requeue_after_clean_stop(sessions: sessionmaker[Session], pipeline_id: str) -> None:
    """The worker stopped cleanly mid-run: back to `queued`, and the attempt `begin_attempt`
    counted is given back, since only crashes use attempts up."""
    with session_scope(sessions) as session:
        pipeline = session.get(Pipeline, pipeline_id)
        if pipeline is not None:
            pipeline.status = PipelineStatus.QUEUED.value
            pipeline.attempts = max((pipeline.attempts or 0) - 1, 0)


@dataclass(frozen=True)
class RunningPipeline:
    id: str
    status: str
    attempts: int
    mlflow_run_id: str | None


def running(sessions: sessionmaker[Session]) -> list[RunningPipeline]:
    """Pipelines whose status says a worker is running them."""
    with session_scope(sessions) as session:
        rows = session.scalars(
            select(Pipeline).where(Pipeline.status.in_([str(s) for s in STAGES]))
        )
        return [RunningPipeline(p.id, p.status, p.attempts or 0, p.mlflow_run_id) for p in rows]
