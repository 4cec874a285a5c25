"""One pipeline run's bookkeeping: its stage in the database, its log, timings and outcome."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

from mlflow.tracking import MlflowClient

from mlops_core import pipeline_queue
from mlops_core.db import PipelineStatus, utcnow
from pipeline_worker import records, tracking
from pipeline_worker.cancellation import PipelineCancelled
from pipeline_worker.deps import WorkerDeps
from pipeline_worker.joblog import PipelineLog
from pipeline_worker.mlflow_retry import PatientMlflow
from pipeline_worker.records import PipelineJob
from pipeline_worker.rollout import RolloutRun
from pipeline_worker.scrub import Redactor, secret_values

logger = logging.getLogger(__name__)

RUN_STATUS = {
    PipelineStatus.SUCCEEDED: "FINISHED",
    PipelineStatus.FAILED: "FAILED",
    PipelineStatus.CANCELLED: "KILLED",
}


class RunContext:
    def __init__(self, deps: WorkerDeps, job: PipelineJob) -> None:
        self.deps = deps
        self.job = job
        self.redact = Redactor(secret_values(extra=[job.github_token]))
        self.log = PipelineLog(deps.redis, job.id, self.redact)
        self.timings: dict[str, float] = {}
        self.stage_name = PipelineStatus.QUEUED.value
        self.mlflow_run_id: str | None = None
        self.mlflow = PatientMlflow(deps.mlflow, deps.settings.mlflow_retry_budget_s).as_client()
        """Every MLflow call of this pipeline goes through it (see `mlflow_retry`)."""
        self.workdir = deps.workroot / job.id

    async def update(self, **fields: object) -> None:
        await asyncio.to_thread(records.update, self.deps.sessions, self.job.id, **fields)

    def rollout_run(self) -> RolloutRun:
        deps = self.deps
        return RolloutRun(deps.redis, deps.sessions, deps.settings, self.log.write, self.cancelled)

    async def cancelled(self) -> bool:
        return await pipeline_queue.cancel_requested(self.deps.redis, self.job.id)

    @contextlib.asynccontextmanager
    async def stage(self, status: PipelineStatus) -> AsyncIterator[None]:
        """Enter a stage: cancel check, status, log prefix; its time is recorded either way."""
        if await self.cancelled():
            raise PipelineCancelled()
        self.stage_name = self.log.stage = status.value
        await self.update(status=status.value)
        async with self.timed(status.value):
            yield

    @contextlib.asynccontextmanager
    async def timed(self, name: str) -> AsyncIterator[None]:
        """A timed step under `name` in `stage_timings` and the log; a stage is one, and so is
        work after the deploy (`recording`) that changes no status."""
        self.log.stage = name
        await self.log.write("started")
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(time.monotonic() - started, 3)
            await self.update(stage_timings=dict(self.timings))
        await self.log.write(f"done in {self.timings[name]:.2f}s")

    async def finish(
        self, status: PipelineStatus, message: str | None = None, stage: str | None = None
    ) -> None:
        await finalize(
            self.deps,
            self.job.id,
            self.log,
            status,
            stage=stage or self.stage_name,
            message=message,
            run_id=self.mlflow_run_id,
            mlflow=self.mlflow,
        )

    def local_file(self, *parts: str) -> Path:
        return self.workdir.joinpath(*parts)


async def finalize(
    deps: WorkerDeps,
    pipeline_id: str,
    log: PipelineLog,
    status: PipelineStatus,
    *,
    stage: str,
    message: str | None,
    run_id: str | None,
    mlflow: MlflowClient | None = None,
) -> None:
    """Write the terminal state: the MLflow run, the last log line, the row, the end marker.
    `mlflow`: the pipeline's own client (default: the worker's)."""
    if message:
        message = log.redact(message)
    failed = status is not PipelineStatus.SUCCEEDED
    # NOTE: the MLflow run closes first, so whoever sees the terminal status sees it all.
    if run_id:
        try:
            tags = {"mlops.status": status.value}
            if failed:
                tags.update({"mlops.error_stage": stage, "mlops.error": (message or "")[:4000]})
            await asyncio.to_thread(
                tracking.end_run, mlflow or deps.mlflow, run_id, RUN_STATUS[status], tags
            )
        except Exception:
            logger.warning("could not close MLflow run %s", run_id, exc_info=True)
    if status is PipelineStatus.SUCCEEDED:
        await log.write("pipeline succeeded", stage=stage)
    else:
        await log.write(f"pipeline {status.value} at {stage}: {message}", stage=stage)
    text = await log.transcript()
    await asyncio.to_thread(
        records.update,
        deps.sessions,
        pipeline_id,
        status=status.value,
        error_stage=stage if failed else None,
        error_message=message if failed else None,
        log=text,
        finished_at=utcnow(),
    )
    # NOTE: the row ends before the log does, so a watcher told the end status then reading
    # the pipeline sees it ended too (a worker lost in between: watchers end from the row).
    await log.end(status.value)
