"""The box that runs a pipeline's pushed code (`pipeline_worker.boxed.pipeline`), seen from
the worker: one box for the executing, converting and verifying stages, whose events each
stage awaits in turn.

Afterwards only data comes out: `model.onnx` and `signature.json`, read without following
links and checked here (`take_model`), and the files `keep_notebook_record` reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from mlops_core.db import PipelineStatus
from mlops_core.errors import PipelineError
from mlops_core.settings import Settings
from mlops_core.signature import MODEL_FILE, SIGNATURE_FILE, ModelSignature
from pipeline_worker.box_files import BoxDir, UnsafeFile, harvest
from pipeline_worker.boxed import EVENT_PREFIX, parse_event
from pipeline_worker.cancellation import CancelCheck, PipelineCancelled
from pipeline_worker.sandbox import BoxJob, Limits, Sandbox, SandboxUnavailable
from pipeline_worker.stages.execute import (
    EXECUTED_FILE,
    CellTracker,
    LogFn,
    box_failure,
    explain,
    sandbox_refusal,
)

MODULE = "pipeline_worker.boxed.pipeline"
S = PipelineStatus
MILESTONES = ("executed", "converted", "verified")
BOXED_STAGES = {S.EXECUTING.value, S.CONVERTING.value, S.VERIFYING.value}
MAX_SIGNATURE_BYTES = 1024 * 1024


class PipelineBox:
    def __init__(
        self,
        sandbox: Sandbox,
        box: BoxDir,
        *,
        settings: Settings,
        log: LogFn,
        log_output: LogFn,
        cancelled: CancelCheck,
        name: str,
    ) -> None:
        self._sandbox, self._box, self._settings = sandbox, box, settings
        self._log, self._log_output, self._cancelled = log, log_output, cancelled
        self._name = name
        self._tracker = CellTracker()
        self._milestones: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self, notebook: str, parameters: dict[str, str], env: dict[str, str]) -> None:
        loop = asyncio.get_running_loop()
        self._milestones = {name: loop.create_future() for name in MILESTONES}
        spec = {
            "notebook": self._box.at(notebook),
            "executed": self._box.at(EXECUTED_FILE),
            "parameters": parameters,
            "onnx_dir": self._box.at("onnx"),
            "kernel_name": self._settings.kernel_name,
            "start_timeout_s": self._settings.kernel_start_timeout_s,
            "execution_timeout_s": self._settings.execution_timeout_s,
        }
        job = BoxJob(
            name=self._name,
            module=MODULE,
            args=(json.dumps(spec),),
            workdir=self._box.host,
            env=env,
            limits=Limits.from_settings(self._settings),
            network=self._settings.sandbox_network,
            labels={"mlops.pipeline": self._name},
        )
        self._task = asyncio.ensure_future(self._run(job))

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

    async def _run(self, job: BoxJob) -> None:
        failure: PipelineError | None = None

        async def on_line(line: str) -> None:
            nonlocal failure
            event = parse_event(line)
            if event is None:
                if not line.startswith(EVENT_PREFIX):
                    await self._log_output(f"{self._tracker.where_short()} | {line}")
                return
            kind = event["kind"]
            if kind == "cell":
                text = self._tracker.describe(event)
                if text is not None:
                    await (self._log_output if event.get("phase") == "output" else self._log)(text)
            elif kind in self._milestones and not self._milestones[kind].done():
                if kind == "executed":
                    self._tracker.current = None  # later output is the conversion's, no cell's
                self._milestones[kind].set_result(event)
            elif kind == "error" and failure is None:
                failure = self._failure(event)

        await self._log(
            f"starting kernel {self._settings.kernel_name!r} in the {self._sandbox.name} sandbox"
        )
        try:
            outcome = await self._sandbox.run(job, on_line, self._cancelled)
        except SandboxUnavailable as exc:
            self._fail_pending(PipelineError(S.EXECUTING, sandbox_refusal(str(exc))))
            return
        except BaseException as exc:
            self._fail_pending(exc)
            raise
        if outcome.cancelled:
            self._fail_pending(PipelineCancelled())
        elif failure is not None:
            self._fail_pending(failure)
        else:
            self._fail_pending(box_failure(S.EXECUTING, outcome, self._settings))

    def _failure(self, event: dict[str, Any]) -> PipelineError:
        stage = event.get("stage")
        if stage == S.EXECUTING.value and "type" in event:
            return explain(event, self._tracker, self._settings)
        stage = stage if stage in BOXED_STAGES else S.EXECUTING.value
        return PipelineError(S(stage), str(event.get("message"))[:4000])

    def _fail_pending(self, exc: BaseException) -> None:
        for future in self._milestones.values():
            if not future.done():
                future.set_exception(exc)


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
