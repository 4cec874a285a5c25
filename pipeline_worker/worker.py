"""arq wiring: `WorkerSettings`, start-up recovery and the `run_pipeline` job, which runs the
stages in order: clone → validate → execute → convert → verify → register → deploy."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any

from arq import cron, func
from arq.connections import ArqRedis
from mlflow.tracking import MlflowClient

from mlops_core import fleet_state, pipeline_queue, rollouts, worker_heartbeat
from mlops_core.db import PipelineStatus, make_engine, make_session_factory
from mlops_core.errors import MlflowUnreachable, PipelineError
from mlops_core.rollout_policy import RolloutPolicy
from mlops_core.rollouts import CHAMPION, RolloutRecord
from mlops_core.settings import get_settings
from mlops_core.worker_heartbeat import WorkerBeat
from pipeline_worker import (
    alias_sync,
    lease,
    mlflow_retry,
    notebook_mlflow,
    records,
    rollout,
    tracking,
)
from pipeline_worker.box_files import BoxDir, UnsafeFile, harvest
from pipeline_worker.cancellation import PipelineCancelled
from pipeline_worker.context import RunContext
from pipeline_worker.deps import WorkerDeps
from pipeline_worker.notebook_outputs import cap_outputs
from pipeline_worker.pipeline_box import PipelineBox, take_model
from pipeline_worker.recovery import recover_orphans
from pipeline_worker.requeue import requeue_stranded
from pipeline_worker.sandbox.runners import sandbox_for
from pipeline_worker.stages import deploy, execute, register
from pipeline_worker.stages.clone import clone
from pipeline_worker.stages.validate import NotebookConfig, notebook_file, validate

logger = logging.getLogger(__name__)
S = PipelineStatus
EXECUTED_COPY = "executed.ipynb"
RECORDING = "recording"
"""The timed step after the deploy: the joblib file and the notebook's record into MLflow."""
# What the worker copies out of a box at most: the executed notebook is capped after.
MAX_EXECUTED_NOTEBOOK_BYTES = 256 * 1024 * 1024
MAX_JOBLIB_BYTES = 2 * 1024 * 1024 * 1024


async def run_stages(run: RunContext) -> RolloutRecord | None:
    """The pipeline's stages; returns the rollout it started, if its policy asks for one."""
    deps, job, settings = run.deps, run.job, run.deps.settings
    if not job.github_url or not job.notebook_path:
        raise PipelineError(S.CLONING, "the pipeline's repository is no longer registered")
    unboxable = await asyncio.to_thread(deps.sandbox.unavailable_reason)
    if unboxable:
        raise PipelineError(S.CLONING, execute.sandbox_refusal(unboxable))

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

    # NOTE: the pipeline's MLflow run is created while the box runs the notebook: nothing in
    # the box needs it (the notebook logs to its own store, copied over afterwards).
    values = {
        "repository": job.repository or job.github_url,
        "commit": cloned.commit_sha,
        "branch": job.branch,
        "pipeline_id": job.id,
        "notebook_version": config.version,
    }
    mlflow_run: asyncio.Task[str] | None = None
    boxed: PipelineBox | None = None
    try:
        async with run.stage(S.EXECUTING):
            mlflow_run = asyncio.create_task(
                asyncio.to_thread(
                    tracking.start_run,
                    run.mlflow,
                    config.model_name,
                    f"pipeline-{job.id[:8]}",
                    values,
                )
            )
            boxed, warm = await deps.boxes.take()
            await boxed.take(run.log.write, run.log.write_output, run.cancelled)
            await run.log.write(
                f"kernel {settings.kernel_name!r} in the {deps.sandbox.name} sandbox "
                f"{boxed.name}: "
                + (f"warm, started {boxed.age_s():.1f}s ago" if warm else "starting now")
            )
            relative = notebook.relative_to(cloned.workdir.resolve()).as_posix()
            await boxed.hand_over(
                cloned.workdir, f"repo/{relative}", execute.parameters(boxed.box, job.id)
            )
            await boxed.executed()
            await note_mlflow_run(run, mlflow_run)
        async with run.stage(S.CONVERTING):
            converted = await boxed.converted()
            await run.log.write(
                f"{converted.get('estimator')}: {converted.get('onnx_bytes')} bytes of ONNX"
            )
        async with run.stage(S.VERIFYING):
            parity = await boxed.verified()
            await run.log.write(f"parity: {str(parity.get('summary'))[:2000]}")
            await boxed.close()
        return await register_and_deploy(run, boxed, config, cloned.commit_sha)
    finally:
        if run.mlflow_run_id is None and mlflow_run is not None:
            # NOTE: the run must be known to be closed, however the pipeline ended.
            with contextlib.suppress(Exception):
                await note_mlflow_run(run, mlflow_run)
        if boxed is not None:
            await boxed.close()
            if boxed.notebook_run and run.mlflow_run_id and RECORDING not in run.timings:
                await keep_notebook_record(run, boxed.box, boxed.notebook_run)
            await boxed.discard()
        deps.boxes.replenish()


async def note_mlflow_run(run: RunContext, started: asyncio.Task[str]) -> None:
    run.mlflow_run_id = await started
    await run.update(mlflow_run_id=run.mlflow_run_id)
    await run.log.write(f"MLflow run {run.mlflow_run_id}")


async def register_and_deploy(
    run: RunContext, boxed: PipelineBox, config: NotebookConfig, commit: str
) -> RolloutRecord | None:
    """Register the ONNX model, deploy it, then record the rest in MLflow (`recording`)."""
    deps, job, settings = run.deps, run.job, run.deps.settings
    assert run.mlflow_run_id is not None
    onnx_dir = run.local_file("onnx")
    await asyncio.to_thread(take_model, boxed.box, onnx_dir, settings.max_message_bytes)
    joblib_path = await asyncio.to_thread(
        harvest_or_fail, boxed.box, execute.MODEL_FILE, run.local_file("joblib", "model.joblib")
    )

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
                run.mlflow,
                register.RegisterInput(
                    model_name=config.model_name,
                    run_id=run.mlflow_run_id,
                    onnx_dir=onnx_dir,
                    tags={"pipeline_id": job.id, "commit": commit},
                ),
            )
            await run.update(model_version=version)
            await run.log.write(f"registered {config.model_name} version {version}")

        async with run.stage(S.DEPLOYING):
            started = await deploy_version(run, config.model_name, version, config.rollout)
    # NOTE: served (or its rollout started): the next box may warm now, and what no replica
    # needs is recorded after. The pipeline ends only once that is done too; like the
    # notebook's record, a joblib copy MLflow refused is logged, never a failure: the version
    # it belongs to already serves.
    deps.boxes.replenish()
    async with run.timed(RECORDING):
        try:
            await asyncio.to_thread(
                register.keep_joblib, run.mlflow, run.mlflow_run_id, joblib_path
            )
        except Exception as exc:
            logger.warning("joblib copy of %s not kept", job.id, exc_info=True)
            await run.log.write(f"the joblib copy was not kept: {type(exc).__name__}: {exc}")
        await keep_notebook_record(run, boxed.box, boxed.notebook_run)
    return started


async def deploy_version(
    run: RunContext, model: str, version: str, notebook_policy: RolloutPolicy | None
) -> RolloutRecord | None:
    """Deploy at once, or start a canary or shadow rollout (returned, to be driven) when the
    policy says so and a champion serves to compare with."""
    deps, settings = run.deps, run.deps.settings
    policy = notebook_policy
    if policy is None:
        policy = await asyncio.to_thread(rollouts.get_policy, deps.sessions, model)
    champion = await fleet_state.get_desired_model(deps.redis, model)
    if policy.progressive and champion is not None and champion.active != version:
        return await rollout.start(run.rollout_run(), model, version, champion, policy, run.job.id)
    if policy.progressive:
        await run.log.write(f"{policy.strategy}: nothing serves {model} yet, so it deploys at once")
    await rollout.supersede(run.rollout_run(), model, f"superseded by version {version}")
    await deploy.deploy(
        deps.redis,
        model,
        version,
        timeout_s=settings.deploy_timeout_s,
        keep_versions=settings.keep_versions,
        log=run.log.write,
    )
    await rollouts.move_aliases(
        deps.sessions, deps.redis, model, {CHAMPION: version}, "deployed", run.job.id
    )
    return None


async def follow_rollout(run: RunContext, record: RolloutRecord) -> None:
    """Drive the pipeline's rollout to its end; a rollout that did not promote fails the
    pipeline at its deploy stage, saying why."""
    run.stage_name = run.log.stage = S.DEPLOYING.value
    final = await rollout.drive(run.rollout_run(), record)
    failure = rollout.outcome(final)
    if failure is not None:
        raise failure


async def keep_notebook_record(run: RunContext, box: BoxDir, notebook_run: str) -> None:
    """After the notebook's box ended, however it ended: its executed copy (outputs capped)
    beside the run, and what it logged to MLflow copied into the pipeline's run. A failure
    here is logged, never raised: it must not hide the pipeline's own outcome."""
    try:
        await _keep_notebook_record(run, box, notebook_run)
    except Exception as exc:
        logger.warning("notebook record of %s not kept", run.job.id, exc_info=True)
        await run.log.write(f"the notebook's record was not kept: {type(exc).__name__}: {exc}")


async def _keep_notebook_record(run: RunContext, box: BoxDir, notebook_run: str) -> None:
    assert run.mlflow_run_id is not None
    executed = run.local_file(EXECUTED_COPY)
    try:
        kept = await asyncio.to_thread(
            harvest, box, execute.EXECUTED_FILE, executed, MAX_EXECUTED_NOTEBOOK_BYTES
        )
    except UnsafeFile as exc:
        await run.log.write(f"the executed notebook was not kept: {exc}")
        kept = None
    if kept is not None:
        await asyncio.to_thread(cap_outputs, kept)
        await asyncio.to_thread(
            tracking.log_artifact, run.mlflow, run.mlflow_run_id, kept, "notebook"
        )
    record = await asyncio.to_thread(
        notebook_mlflow.read_run, box.host_path("mlruns"), notebook_run
    )
    await asyncio.to_thread(notebook_mlflow.copy_to, run.mlflow, run.mlflow_run_id, record)
    logged = len(record.params) + len(record.metrics) + len(record.tags)
    if logged or record.skipped:
        await run.log.write(
            f"copied the notebook's MLflow logs into the run: {len(record.params)} params, "
            f"{len(record.metrics)} metric points, {len(record.tags)} tags"
            + (f" ({record.skipped} entries not copied)" if record.skipped else "")
        )


def harvest_or_fail(box: BoxDir, relative: str, dest: Path) -> Path:
    try:
        found = harvest(box, relative, dest, MAX_JOBLIB_BYTES)
    except UnsafeFile as exc:
        raise PipelineError(S.REGISTERING, f"the exported model was tampered with: {exc}") from None
    if found is None:
        raise PipelineError(S.REGISTERING, "the exported model disappeared")
    return found


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
    deadline: asyncio.Timeout | None = None
    async with lease.lease(deps.redis, pipeline_id, deps.worker_id):
        attempt, queued_s = await asyncio.to_thread(
            records.begin_attempt, deps.sessions, pipeline_id
        )
        run.timings[S.QUEUED.value] = queued_s
        await run.log.write(f"attempt {attempt} on worker {deps.worker_id}")
        shutil.rmtree(run.workdir, ignore_errors=True)
        try:
            # NOTE: a pipeline whose rollout started resumes driving it, however many attempts
            # it took: the candidate serves requests and needs its driver.
            started = await asyncio.to_thread(rollouts.of_pipeline, deps.sessions, pipeline_id)
            if started is not None:
                await run.log.write(f"resuming the rollout of version {started.candidate}")
            elif attempt > deps.settings.pipeline_max_attempts:
                raise PipelineError(
                    S.QUEUED, f"gave up after {attempt - 1} attempts (MLOPS_PIPELINE_MAX_ATTEMPTS)"
                )
            else:
                async with asyncio.timeout(deps.settings.pipeline_timeout_s) as deadline:
                    started = await run_stages(run)
            if started is not None:
                await follow_rollout(run, started)
        except PipelineError as exc:
            await run.finish(S.FAILED, exc.message, stage=str(exc.stage))
        except MlflowUnreachable as exc:
            await run.finish(S.FAILED, exc.message)
        except PipelineCancelled:
            await run.finish(S.CANCELLED, "cancelled on request")
        except TimeoutError:
            if deadline is None or not deadline.expired():
                raise
            await run.finish(
                S.FAILED,
                f"the pipeline ran past its timeout of {deps.settings.pipeline_timeout_s:.0f}s "
                "(MLOPS_PIPELINE_TIMEOUT_S)",
            )
        except asyncio.CancelledError:
            # NOTE: the worker is shutting down: the job goes back to arq's queue and runs
            # again from the start on the next worker. A clean stop is no failed attempt, so
            # the row gives it back (first: the database may answer where Redis does not).
            # NOTE: shielded: arq may cancel again while a slow box teardown finishes, and the
            # bookkeeping of a clean stop must still complete.
            await asyncio.shield(note_clean_stop(run))
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


async def note_clean_stop(run: RunContext) -> None:
    """The row gives the attempt back (first: the database may answer where Redis does not),
    the log says so, and the attempt's MLflow run ends KILLED."""
    deps = run.deps
    await asyncio.to_thread(records.requeue_after_clean_stop, deps.sessions, run.job.id)
    with contextlib.suppress(Exception):
        await run.log.write(
            "worker stopping: the pipeline will restart from the beginning "
            "(this attempt is not counted)"
        )
    if run.mlflow_run_id:
        # One quick try (the worker's own client): a stop never waits out MLflow.
        with contextlib.suppress(Exception):
            await asyncio.to_thread(deps.mlflow.set_terminated, run.mlflow_run_id, "KILLED")


async def recover(ctx: dict[str, Any]) -> list[str]:
    """Periodic check for pipelines whose worker died while other workers kept running."""
    return await recover_orphans(ctx["deps"])


async def heartbeat(redis: ArqRedis, beat: WorkerBeat) -> None:
    """Tell the gateway this worker lives, and whether it can box pushed code."""
    while True:
        try:
            await worker_heartbeat.beat(redis, beat)
        except Exception:  # Redis away: the key expires and /ready says so
            logger.warning("worker heartbeat not written", exc_info=True)
        await asyncio.sleep(worker_heartbeat.INTERVAL_S)


async def startup(ctx: dict[str, Any]) -> None:
    settings = get_settings()
    mlflow_retry.fail_fast()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url or "")
    deps = WorkerDeps(
        settings=settings,
        sessions=make_session_factory(engine),
        redis=ctx["redis"],
        mlflow=MlflowClient(tracking_uri=settings.mlflow_tracking_uri),
        sandbox=sandbox_for(settings),
    )
    ctx["deps"], ctx["engine"] = deps, engine
    recovered = await recover_orphans(deps)
    if recovered:
        logger.warning("recovered pipelines left running: %s", ", ".join(recovered))
    reason = await asyncio.to_thread(deps.sandbox.unavailable_reason)
    if reason:
        logger.error("no sandbox for pushed code (%s): pipelines will fail until fixed", reason)
    else:
        deps.boxes.open()
        # NOTE: the first heartbeat (which the gateway's /ready waits for) follows the first
        # warm box, so the first push after a start finds its kernel waiting too. Bounded:
        # a kernel that cannot start delays nothing past its own start timeout.
        if deps.boxes.warm and not await deps.boxes.wait_ready(settings.kernel_start_timeout_s):
            logger.warning("the first warm box is not ready; pipelines start their own")
    ctx["heartbeat"] = asyncio.create_task(
        heartbeat(deps.redis, WorkerBeat(deps.worker_id, deps.sandbox.name, reason))
    )
    ctx["alias_sync"] = asyncio.create_task(alias_sync.run_forever(deps.redis, deps.mlflow))
    logger.info("pipeline worker %s ready (sandbox: %s)", deps.worker_id, deps.sandbox.name)


async def shutdown(ctx: dict[str, Any]) -> None:
    mlflow_retry.stop_waiting()
    if "alias_sync" in ctx:
        ctx["alias_sync"].cancel()
    if "heartbeat" in ctx:
        ctx["heartbeat"].cancel()
        with contextlib.suppress(BaseException):
            await worker_heartbeat.forget(ctx["deps"].redis, ctx["deps"].worker_id)
    if "deps" in ctx:
        await ctx["deps"].boxes.close()
        ctx["engine"].dispose()


_settings = get_settings()


class WorkerSettings:
    """For `python -m pipeline_worker` and `arq pipeline_worker.worker.WorkerSettings`."""

    functions = [func(run_pipeline, name=pipeline_queue.JOB_NAME)]
    # Every 15 s: a pipeline whose worker died on another host is retried within TTL + 15 s.
    # Every 15 s too, between those: pipelines queued in the database whose job Redis lacks.
    cron_jobs = [
        cron(recover, second={0, 15, 30, 45}, unique=True),
        cron(requeue_stranded, second={7, 22, 37, 52}, unique=True),
    ]
    queue_name = pipeline_queue.QUEUE_NAME
    redis_settings = pipeline_queue.redis_settings(_settings.redis_url or "redis://localhost:6379")
    on_startup = startup
    on_shutdown = shutdown
    # NOTE: arq looks for new jobs every 0.5 s by default, a quarter of a second of every
    # push's wait on average; a Redis read every 0.1 s costs nothing next to it.
    poll_delay = 0.1
    max_jobs = _settings.worker_concurrency
    # NOTE: our own timeout (pipeline_timeout_s) ends a pipeline cleanly; arq's is a backstop.
    job_timeout = _settings.pipeline_timeout_s + _settings.rollout_max_s + 120
    # Attempts are counted in the database (pipeline_max_attempts); arq must not refuse first.
    max_tries = 1000
    keep_result = 3600
