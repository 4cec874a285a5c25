"""arq wiring: `WorkerSettings`, start-up recovery and the `run_pipeline` job, which runs the
stages in order: clone → validate → execute → convert → verify → register → deploy."""

from __future__ import annotations

import asyncio
import logging
import shutil
from typing import Any

from arq import cron, func
from mlflow.tracking import MlflowClient

from mlops_core import pipeline_queue
from mlops_core.db import PipelineStatus, make_engine, make_session_factory
from mlops_core.errors import PipelineError
from mlops_core.settings import get_settings
from pipeline_worker import lease, records, tracking
from pipeline_worker.cancellation import PipelineCancelled
from pipeline_worker.context import RunContext
from pipeline_worker.deps import WorkerDeps
from pipeline_worker.isolation import ModelJobs
from pipeline_worker.recovery import recover_orphans
from pipeline_worker.scrub import kernel_environment
from pipeline_worker.stages import deploy, execute, register
from pipeline_worker.stages.clone import clone
from pipeline_worker.stages.validate import notebook_file, validate

logger = logging.getLogger(__name__)
S = PipelineStatus


async def run_stages(run: RunContext) -> None:
    deps, job, settings = run.deps, run.job, run.deps.settings
    if not job.github_url or not job.notebook_path:
        raise PipelineError(S.CLONING, "the pipeline's repository is no longer registered")

    async with run.stage(S.CLONING):
        cloned = await clone(
            job.github_url,
            job.branch,
            job.commit_sha,
            run.local_file("repo"),
            token=job.github_token,
            settings=settings,
            log=run.log.write,
            redact=run.redact,
        )
        await run.update(commit_sha=cloned.commit_sha)

    async with run.stage(S.VALIDATING):
        notebook = notebook_file(cloned.workdir, job.notebook_path)
        config = validate(notebook)
        await run.update(model_name=config.model_name, notebook_version=config.version)
        await run.log.write(f"model {config.model_name!r}, notebook VERSION {config.version!r}")

    async with run.stage(S.EXECUTING):
        values = {
            "repository": job.repository or job.github_url,
            "commit": cloned.commit_sha,
            "branch": job.branch,
            "pipeline_id": job.id,
            "notebook_version": config.version,
        }
        run.mlflow_run_id = await asyncio.to_thread(
            tracking.start_run, deps.mlflow, config.model_name, f"pipeline-{job.id[:8]}", values
        )
        await run.update(mlflow_run_id=run.mlflow_run_id)
        await run.log.write(f"MLflow run {run.mlflow_run_id}")
        uri = settings.mlflow_tracking_uri
        kernel_env = kernel_environment(
            extra={"MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": run.mlflow_run_id}
        )
        output_dir = run.local_file("output")
        output_dir.mkdir(parents=True, exist_ok=True)
        executed_path = run.local_file("executed.ipynb")
        try:
            executed = await execute.execute(
                notebook,
                executed_path,
                execute.parameters(output_dir, job.id, uri),
                kernel_env=kernel_env,
                settings=settings,
                log=run.log.write,
                cancelled=run.cancelled,
            )
        except (PipelineError, PipelineCancelled):
            # NOTE: the partly executed notebook shows the user the failing cell's traceback.
            if executed_path.is_file():
                await asyncio.to_thread(
                    tracking.log_artifact, deps.mlflow, run.mlflow_run_id, executed_path, "notebook"
                )
            raise

    onnx_dir = run.local_file("onnx")
    async with run.stage(S.CONVERTING):
        converted = await deps.model_jobs.call(
            S.CONVERTING, "convert_job", str(executed.model_path), str(onnx_dir)
        )
        await run.log.write(f"{converted['estimator']}: {converted['onnx_bytes']} bytes of ONNX")

    async with run.stage(S.VERIFYING):
        parity = await deps.model_jobs.call(
            S.VERIFYING,
            "verify_job",
            str(executed.model_path),
            str(onnx_dir / "model.onnx"),
            str(executed.sample_input_path) if executed.sample_input_path else None,
        )
        await run.log.write(f"parity: {parity['summary']}")

    # NOTE: versions of one model register and roll out one pipeline at a time, so version
    # numbers follow the order pipelines reach this point and rollouts never interleave.
    lock = deps.redis.lock(
        f"mlops:model:{config.model_name}:deploy-lock",
        timeout=settings.deploy_timeout_s + 600,
        sleep=0.2,
    )
    if await lock.locked():
        await run.log.write(f"waiting for another pipeline of {config.model_name!r} to deploy")
    async with lock:
        async with run.stage(S.REGISTERING):
            version = await asyncio.to_thread(
                register.register,
                deps.mlflow,
                register.RegisterInput(
                    model_name=config.model_name,
                    run_id=run.mlflow_run_id,
                    onnx_dir=onnx_dir,
                    joblib_path=executed.model_path,
                    executed_notebook=executed.executed_notebook,
                    tags={"pipeline_id": job.id, "commit": cloned.commit_sha},
                ),
            )
            await run.update(model_version=version)
            await run.log.write(f"registered {config.model_name} version {version}")

        async with run.stage(S.DEPLOYING):
            await deploy.deploy(
                deps.redis,
                config.model_name,
                version,
                timeout_s=settings.deploy_timeout_s,
                keep_versions=settings.keep_versions,
                log=run.log.write,
            )


async def run_pipeline(ctx: dict[str, Any], pipeline_id: str) -> str:
    """The arq job: run one pipeline to a terminal state; returns that state."""
    deps: WorkerDeps = ctx["deps"]
    job = await asyncio.to_thread(records.load, deps.sessions, pipeline_id)
    if job is None:
        logger.warning("pipeline %s is not in the database; job dropped", pipeline_id)
        return "missing"
    if PipelineStatus(job.status).terminal:
        return job.status
    run = RunContext(deps, job)
    async with lease.lease(deps.redis, pipeline_id, deps.worker_id):
        attempt = await asyncio.to_thread(records.begin_attempt, deps.sessions, pipeline_id)
        await run.log.write(f"attempt {attempt} on worker {deps.worker_id}")
        shutil.rmtree(run.workdir, ignore_errors=True)
        try:
            if attempt > deps.settings.pipeline_max_attempts:
                raise PipelineError(
                    S.QUEUED, f"gave up after {attempt - 1} attempts (MLOPS_PIPELINE_MAX_ATTEMPTS)"
                )
            async with asyncio.timeout(deps.settings.pipeline_timeout_s) as deadline:
                await run_stages(run)
        except PipelineError as exc:
            await run.finish(S.FAILED, exc.message, stage=str(exc.stage))
        except PipelineCancelled:
            await run.finish(S.CANCELLED, "cancelled on request")
        except TimeoutError:
            if not deadline.expired():
                raise
            await run.finish(
                S.FAILED,
                f"the pipeline ran past its timeout of {deps.settings.pipeline_timeout_s:.0f}s "
                "(MLOPS_PIPELINE_TIMEOUT_S)",
            )
        except asyncio.CancelledError:
            # NOTE: the worker is shutting down: the job goes back to arq's queue and runs
            # again from the start on the next worker (or is failed once attempts run out).
            await run.log.write("worker stopping: the pipeline will restart from the beginning")
            await run.update(status=S.QUEUED.value)
            raise
        except Exception as exc:
            logger.exception("pipeline %s failed unexpectedly", pipeline_id)
            await run.finish(S.FAILED, f"internal error: {type(exc).__name__}: {exc}")
        else:
            await run.finish(S.SUCCEEDED)
        finally:
            shutil.rmtree(run.workdir, ignore_errors=True)
    final = await asyncio.to_thread(records.load, deps.sessions, pipeline_id)
    return final.status if final else "missing"


async def recover(ctx: dict[str, Any]) -> list[str]:
    """Periodic check for pipelines whose worker died while other workers kept running."""
    return await recover_orphans(ctx["deps"])


async def startup(ctx: dict[str, Any]) -> None:
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url or "")
    deps = WorkerDeps(
        settings=settings,
        sessions=make_session_factory(engine),
        redis=ctx["redis"],
        mlflow=MlflowClient(tracking_uri=settings.mlflow_tracking_uri),
        model_jobs=ModelJobs(settings.worker_concurrency),
    )
    ctx["deps"], ctx["engine"] = deps, engine
    recovered = await recover_orphans(deps)
    if recovered:
        logger.warning("recovered pipelines left running: %s", ", ".join(recovered))
    ctx["warm"] = asyncio.create_task(deps.model_jobs.warm())
    logger.info("pipeline worker %s ready", deps.worker_id)


async def shutdown(ctx: dict[str, Any]) -> None:
    if "deps" in ctx:
        ctx["deps"].model_jobs.close()
        ctx["engine"].dispose()


_settings = get_settings()


class WorkerSettings:
    """For `python -m pipeline_worker` and `arq pipeline_worker.worker.WorkerSettings`."""

    functions = [func(run_pipeline, name=pipeline_queue.JOB_NAME)]  # type: ignore[arg-type]
    # Every 15 s: a pipeline whose worker died on another host is retried within TTL + 15 s.
    cron_jobs = [cron(recover, second={0, 15, 30, 45}, unique=True)]  # type: ignore[arg-type]
    queue_name = pipeline_queue.QUEUE_NAME
    redis_settings = pipeline_queue.redis_settings(_settings.redis_url or "redis://localhost:6379")
    on_startup = startup
    on_shutdown = shutdown
    max_jobs = _settings.worker_concurrency
    # NOTE: our own timeout (pipeline_timeout_s) ends a pipeline cleanly; arq's is a backstop.
    job_timeout = _settings.pipeline_timeout_s + 120
    # Attempts are counted in the database (pipeline_max_attempts); arq must not refuse first.
    max_tries = 1000
    keep_result = 3600
