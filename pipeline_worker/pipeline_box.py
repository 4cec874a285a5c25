"""The box that runs a pipeline's pushed code (`pipeline_worker.boxed.pipeline`), seen from
the worker: one box for the executing, converting and verifying stages, whose events each
stage awaits in turn.

A box starts before its pipeline is known (ahead, warm: see `warm_box`) or when its pipeline
needs it; either way it starts with its own empty directory, its kernel and its libraries,
and waits. `take` gives it to one pipeline (its log, its cancel check, its wall time);
`hand_over` lays the checkout into its directory and writes the job. Nothing of a pipeline
reaches a box before `take`, and a box is never given to a second pipeline.

Afterwards only data comes out: `model.onnx` and `signature.json`, read without following
links and checked here (`take_model`), and the files `keep_notebook_record` reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from mlops_core.db import PipelineStatus
from mlops_core.errors import PipelineError
from mlops_core.settings import Settings
from mlops_core.signature import MODEL_FILE, SIGNATURE_FILE, ModelSignature
from pipeline_worker import notebook_mlflow
from pipeline_worker.box_files import BoxDir, UnsafeFile, harvest, lay_out, make_box_dir
from pipeline_worker.boxed import EVENT_PREFIX, parse_event
from pipeline_worker.cancellation import CancelCheck, PipelineCancelled
from pipeline_worker.sandbox import BoxJob, BoxOutcome, Limits, Sandbox, SandboxUnavailable
from pipeline_worker.scrub import box_environment
from pipeline_worker.stages.execute import (
    EXECUTED_FILE,
    CellTracker,
    LogFn,
    box_failure,
    explain,
    sandbox_refusal,
)

MODULE = "pipeline_worker.boxed.pipeline"
JOB_FILE = "job.json"
S = PipelineStatus
MILESTONES = ("executed", "converted", "verified")
BOXED_STAGES = {S.EXECUTING.value, S.CONVERTING.value, S.VERIFYING.value}
MAX_SIGNATURE_BYTES = 1024 * 1024
# Lines a box prints before a pipeline takes it (its kernel's start-up warnings), kept for
# that pipeline's log.
MAX_EARLY_LINES = 200
COLD_BOX_MAX_WAIT_S = 600.0


async def _never() -> bool:
    return False


async def _discard(_line: str) -> None:
    return None


class PipelineBox:
    def __init__(self, sandbox: Sandbox, box: BoxDir, *, settings: Settings, name: str) -> None:
        self._sandbox, self.box, self._settings = sandbox, box, settings
        self.name = name
        self._log: LogFn = _discard
        self._log_output: LogFn = _discard
        self._cancelled: CancelCheck = _never
        self._taken = False
        self._early: list[str] = []
        self._tracker = CellTracker()
        loop = asyncio.get_running_loop()
        self._milestones: dict[str, asyncio.Future[dict[str, Any]]] = {
            name: loop.create_future() for name in MILESTONES
        }
        self._failure: PipelineError | None = None
        self._task: asyncio.Task[None] | None = None
        self._deadline: float | None = None
        self.timed_out = False
        self.ready = False
        """The box reported its kernel started and warmed."""
        self.started_at = 0.0
        self.notebook_run = ""
        """The notebook's own MLflow run in the box's store (`notebook_mlflow`)."""

    @property
    def early_lines(self) -> list[str]:
        """What the box printed before a pipeline took it (for the worker's log)."""
        return list(self._early)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def age_s(self) -> float:
        return time.monotonic() - self.started_at

    async def start(self, *, ahead: bool) -> None:
        """Make the box's directory and its notebook's MLflow store, start the box process;
        `ahead`: before any pipeline needs it (a warm box), so it may wait a while."""
        await asyncio.to_thread(make_box_dir, self.box)
        self.notebook_run = await asyncio.to_thread(
            notebook_mlflow.create_run, self.box.host_path("mlruns")
        )
        # NOTE: the kernel's environment is fixed when it starts, before any pipeline is
        # known: it holds only what is the same for every box of this worker (the box's own
        # paths and its own notebook MLflow run). What is a pipeline's (PIPELINE_ID, the
        # model path) reaches the notebook as papermill parameters, with the job.
        env = box_environment(
            {
                **notebook_mlflow.FILE_STORE_SWITCH,
                "MLFLOW_TRACKING_URI": f"file://{self.box.at('mlruns')}",
                "MLFLOW_RUN_ID": self.notebook_run,
            }
        )
        spec = {
            "job_file": self.box.at(JOB_FILE),
            "kernel_name": self._settings.kernel_name,
            "start_timeout_s": self._settings.kernel_start_timeout_s,
            "cwd": self.box.at(),
            "max_wait_s": self.idle_limit_s(ahead),
        }
        limits = Limits.from_settings(self._settings)
        job = BoxJob(
            name=self.name,
            module=MODULE,
            args=(json.dumps(spec),),
            workdir=self.box.host,
            env=env,
            # NOTE: the box's own backstop also covers a warm box's idle time before a
            # pipeline takes it; the pipeline's wall time counts from `take` (see
            # `_pipeline_cancelled`).
            limits=replace(limits, wall_time_s=limits.wall_time_s + self.idle_limit_s(ahead)),
            network=self._settings.sandbox_network,
            labels={"mlops.box": self.name},
        )
        self.started_at = time.monotonic()
        self._task = asyncio.ensure_future(self._run(job))

    def idle_limit_s(self, ahead: bool) -> float:
        """How long the box may wait for its pipeline at most."""
        # NOTE: a box started on demand gets its job once the checkout is copied in.
        return self._settings.warm_box_max_age_s if ahead else COLD_BOX_MAX_WAIT_S

    async def take(self, log: LogFn, log_output: LogFn, cancelled: CancelCheck) -> None:
        """The box is this pipeline's from now on: its lines go to the pipeline's log, its
        cancel check and wall time apply."""
        assert not self._taken, "a box serves one pipeline"
        self._taken = True
        self._deadline = time.monotonic() + self._settings.sandbox_wall_time_s
        self._log, self._log_output, self._cancelled = log, log_output, cancelled
        early, self._early = self._early, []
        for line in early:
            await self._log_output(line)

    async def hand_over(self, checkout: Path, notebook: str, parameters: dict[str, str]) -> None:
        """Lay the checkout into the box and give the box its job; `notebook` is relative to
        the box's directory."""
        await asyncio.to_thread(lay_out, self.box, checkout)
        await asyncio.to_thread(self._sandbox.give, self.box.host)
        job = {
            "notebook": self.box.at(notebook),
            "executed": self.box.at(EXECUTED_FILE),
            "parameters": parameters,
            "onnx_dir": self.box.at("onnx"),
            "kernel_name": self._settings.kernel_name,
            "start_timeout_s": self._settings.kernel_start_timeout_s,
            "execution_timeout_s": self._settings.execution_timeout_s,
        }
        await asyncio.to_thread(_write_atomically, self.box.host_path(JOB_FILE), json.dumps(job))

    async def executed(self) -> dict[str, Any]:
        return await asyncio.shield(self._milestones["executed"])

    async def converted(self) -> dict[str, Any]:
        return await asyncio.shield(self._milestones["converted"])

    async def verified(self) -> dict[str, Any]:
        return await asyncio.shield(self._milestones["verified"])

    async def close(self) -> None:
        """Wait for the box to end; kill it first if a stage still waits on it."""
        if self._task is None:
            return
        if any(not f.done() for f in self._milestones.values()):
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        for future in self._milestones.values():
            if future.done() and not future.cancelled():
                future.exception()  # NOTE: marks the failure as seen: no "never retrieved"

    async def discard(self) -> None:
        """Kill the box (if it still runs) and remove its directory."""
        await self.close()
        await asyncio.to_thread(shutil.rmtree, self.box.host, True)

    async def _pipeline_cancelled(self) -> bool:
        if not self._taken:
            return False
        if self._deadline is not None and time.monotonic() > self._deadline:
            self.timed_out = True
            return True
        return await self._cancelled()

    async def _on_line(self, line: str) -> None:
        event = parse_event(line)
        if event is None:
            if line.startswith(EVENT_PREFIX):
                return
            if not self._taken:
                if len(self._early) < MAX_EARLY_LINES:
                    self._early.append(line)
                return
            await self._log_output(f"{self._tracker.where_short()} | {line}")
            return
        kind = event["kind"]
        if kind == "ready":
            self.ready = True
        elif kind == "cell":
            text = self._tracker.describe(event)
            if text is not None:
                await (self._log_output if event.get("phase") == "output" else self._log)(text)
        elif kind in self._milestones and not self._milestones[kind].done():
            if kind == "executed":
                self._tracker.current = None  # later output is the conversion's, no cell's
            self._milestones[kind].set_result(event)
        elif kind == "error" and self._failure is None:
            self._failure = self._failure_of(event)
            if not self._taken and len(self._early) < MAX_EARLY_LINES:
                self._early.append(line)  # NOTE: why a box died unused, for the worker's log

    async def _run(self, job: BoxJob) -> None:
        try:
            outcome = await self._sandbox.run(job, self._on_line, self._pipeline_cancelled)
        except SandboxUnavailable as exc:
            self._fail_pending(PipelineError(S.EXECUTING, sandbox_refusal(str(exc))))
            return
        except BaseException as exc:
            self._fail_pending(exc)
            raise
        if self.timed_out:
            self._fail_pending(
                box_failure(S.EXECUTING, BoxOutcome(outcome.exit_code, True), self._settings)
            )
        elif outcome.cancelled:
            self._fail_pending(PipelineCancelled())
        elif self._failure is not None:
            self._fail_pending(self._failure)
        else:
            self._fail_pending(box_failure(S.EXECUTING, outcome, self._settings))

    def _failure_of(self, event: dict[str, Any]) -> PipelineError:
        stage = event.get("stage")
        if stage == S.EXECUTING.value and "type" in event:
            return explain(event, self._tracker, self._settings)
        stage = stage if stage in BOXED_STAGES else S.EXECUTING.value
        return PipelineError(S(stage), str(event.get("message"))[:4000])

    def _fail_pending(self, exc: BaseException) -> None:
        for future in self._milestones.values():
            if not future.done():
                future.set_exception(exc)


def _write_atomically(path: Path, text: str) -> None:
    """The box polls for `path`: it must never see it half written."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def take_model(box: BoxDir, onnx_dir: Path, max_model_bytes: int) -> ModelSignature:
    """Copy `model.onnx` and `signature.json` out of the box into `onnx_dir`, checking both
    as data; the signature is returned. PipelineError for anything unexpected."""
    try:
        model = harvest(box, f"onnx/{MODEL_FILE}", onnx_dir / MODEL_FILE, max_model_bytes)
        signature = harvest(
            box, f"onnx/{SIGNATURE_FILE}", onnx_dir / SIGNATURE_FILE, MAX_SIGNATURE_BYTES
        )
    except UnsafeFile as exc:
        raise PipelineError(S.CONVERTING, f"the converted model was tampered with: {exc}") from None
    if model is None or signature is None:
        raise PipelineError(S.CONVERTING, "conversion reported success but wrote no model")
    try:
        return ModelSignature.read(signature)
    except Exception as exc:
        raise PipelineError(
            S.CONVERTING, f"the converted model's signature is invalid: {type(exc).__name__}"
        ) from None
