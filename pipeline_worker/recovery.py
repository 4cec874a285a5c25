"""Pipelines left running by a worker that died: retried from the start, or failed.

A pipeline counts as left behind when its status is a running stage but no live worker holds
its lease (see `lease.py`). While attempts remain it goes back to `queued` and its arq job is
released at once (arq would otherwise wait for the dead job's own timeout); otherwise it fails
with the reason.
"""

from __future__ import annotations

import asyncio
import logging

from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix

from mlops_core import pipeline_queue
from mlops_core.db import PipelineStatus
from pipeline_worker import lease, records
from pipeline_worker.context import finalize
from pipeline_worker.deps import WorkerDeps
from pipeline_worker.joblog import PipelineLog
from pipeline_worker.scrub import Redactor, secret_values

logger = logging.getLogger(__name__)


async def recover_orphans(deps: WorkerDeps) -> list[str]:
    """Retry or fail every pipeline left behind; returns their ids."""
    recovered = []
    for pipeline in await asyncio.to_thread(records.running, deps.sessions):
        if await lease.held_by_live_worker(deps.redis, pipeline.id):
            continue
        recovered.append(pipeline.id)
        log = PipelineLog(deps.redis, pipeline.id, Redactor(secret_values()))
        log.stage = pipeline.status
        maximum = deps.settings.pipeline_max_attempts
        lost = f"the worker running this pipeline stopped during {pipeline.status}"
        if pipeline.attempts < maximum:
            logger.warning("pipeline %s: %s; retrying", pipeline.id, lost)
            await log.write(
                f"{lost}; retrying from the start (attempt {pipeline.attempts + 1} of {maximum})"
            )
            await asyncio.to_thread(
                records.update, deps.sessions, pipeline.id, status=PipelineStatus.QUEUED.value
            )
            await _release_job(deps, pipeline.id)
            if pipeline.mlflow_run_id:
                await _close_run(deps, pipeline.mlflow_run_id)
        else:
            logger.warning("pipeline %s: %s; attempts exhausted", pipeline.id, lost)
            await finalize(
                deps,
                pipeline.id,
                log,
                PipelineStatus.FAILED,
                stage=pipeline.status,
                message=f"{lost} (attempt {pipeline.attempts} of {maximum}); not retried "
                "again: trigger the pipeline to run it anew",
                run_id=pipeline.mlflow_run_id,
            )
            await deps.redis.delete(in_progress_key_prefix + pipeline.id)
    return recovered


async def _release_job(deps: WorkerDeps, pipeline_id: str) -> None:
    """Let a worker pick the dead job up now: its in-progress mark goes, and the job is queued
    again if arq no longer holds it."""
    await deps.redis.delete(in_progress_key_prefix + pipeline_id)
    if not await deps.redis.exists(job_key_prefix + pipeline_id):
        await deps.redis.delete(result_key_prefix + pipeline_id)
        await pipeline_queue.enqueue_pipeline(deps.redis, pipeline_id)


async def _close_run(deps: WorkerDeps, run_id: str) -> None:
    try:
        await asyncio.to_thread(deps.mlflow.set_terminated, run_id, "FAILED")
    except Exception:
        logger.warning("could not close MLflow run %s", run_id, exc_info=True)
