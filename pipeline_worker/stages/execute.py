"""Execute stage: run the notebook with papermill in a fresh kernel of the platform's Python.

The kernel gets the injected parameters, an environment without the platform's secrets (the
caller builds it) and the MLflow run to log into. Each cell's start, output lines and end reach
the log as they happen; a cancel request interrupts the kernel (and kills it if it ignores the
interrupt). The executed notebook is written also when a cell fails.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import papermill
from jupyter_client.kernelspec import NoSuchKernel
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from papermill.exceptions import PapermillExecutionError

from mlops_core.db import PipelineStatus
from mlops_core.errors import PipelineError
from mlops_core.settings import Settings
from pipeline_worker.cancellation import CancelCheck, PipelineCancelled
from pipeline_worker.notebook_engine import ENGINE_NAME, KernelControl

STAGE = PipelineStatus.EXECUTING
CANCEL_POLL_S = 0.5
# A kernel gets this long to honour an interrupt before it is killed.
INTERRUPT_GRACE_S = 5.0
LogFn = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class ExecutionResult:
    executed_notebook: Path
    model_path: Path
    sample_input_path: Path | None
    """Rows the notebook saved for the parity check, if it did."""


def parameters(output_dir: Path, pipeline_id: str, tracking_uri: str) -> dict[str, str]:
    """The parameters papermill injects (the seed README's three, plus an optional output)."""
    return {
        "MODEL_OUTPUT_PATH": str(output_dir / "model.joblib"),
        "PIPELINE_ID": pipeline_id,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "SAMPLE_INPUT_PATH": str(output_dir / "sample_input.npy"),
    }


async def execute(
    notebook: Path,
    executed_notebook: Path,
    params: dict[str, str],
    *,
    kernel_env: dict[str, str],
    settings: Settings,
    log: LogFn,
    cancelled: CancelCheck,
) -> ExecutionResult:
    """Run `notebook` into `executed_notebook`; raise PipelineError or PipelineCancelled."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    control = KernelControl()

    def sink(event: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(events.put_nowait, event)

    run = asyncio.ensure_future(
        asyncio.to_thread(
            papermill.execute_notebook,
            str(notebook),
            str(executed_notebook),
            parameters=params,
            engine_name=ENGINE_NAME,
            kernel_name=settings.kernel_name,
            language="python",
            progress_bar=False,
            log_output=False,
            start_timeout=int(settings.kernel_start_timeout_s),
            execution_timeout=int(settings.execution_timeout_s),
            sink=sink,
            control=control,
            kernel_env=kernel_env,
            kernel_cwd=str(notebook.parent),
        )
    )
    await log(f"starting kernel {settings.kernel_name!r}")
    tracker = _CellTracker()
    cancel_seen_at: float | None = None
    try:
        while not run.done() or not events.empty():
            try:
                event = await asyncio.wait_for(events.get(), CANCEL_POLL_S)
                await log(tracker.describe(event))
            except TimeoutError:
                pass
            if cancel_seen_at is None and await cancelled():
                cancel_seen_at = loop.time()
                await log("cancel requested: interrupting the kernel")
                control.interrupt()
            elif cancel_seen_at is not None and loop.time() - cancel_seen_at > INTERRUPT_GRACE_S:
                control.kill()
        await run
    except asyncio.CancelledError:
        # NOTE: the worker is stopping or the pipeline timed out; the thread cannot be
        # cancelled, but killing the kernel ends it promptly.
        control.kill()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(run), 15)
        raise
    except Exception as exc:
        if cancel_seen_at is not None:
            raise PipelineCancelled() from None
        raise _explain(exc, tracker, settings) from None
    if cancel_seen_at is not None:
        raise PipelineCancelled()

    return collect_outputs(executed_notebook, params)


def collect_outputs(executed_notebook: Path, params: dict[str, str]) -> ExecutionResult:
    """What the notebook left behind; PipelineError when it saved no model."""
    model_path = Path(params["MODEL_OUTPUT_PATH"])
    if not model_path.is_file():
        raise PipelineError(
            STAGE,
            "the notebook ran to the end but saved no model: the mlops:export cell must call "
            "joblib.dump(model, MODEL_OUTPUT_PATH)",
        )
    sample = Path(params["SAMPLE_INPUT_PATH"])
    return ExecutionResult(executed_notebook, model_path, sample if sample.is_file() else None)


class _CellTracker:
    """Turns cell events into log lines and remembers the cell running last."""

    def __init__(self) -> None:
        self.current: dict[str, Any] | None = None
        self.started: dict[int, float] = {}

    def describe(self, event: dict[str, Any]) -> str:
        where = f"cell {event.get('index', '?')} ({event.get('tag', 'untagged')})"
        if event.get("index") == "-":
            where = "injected parameters"
        loop_time = asyncio.get_running_loop().time()
        if event["kind"] == "start":
            self.current = event
            self.started[event["index"]] = loop_time
            return f"{where} started"
        if event["kind"] == "end":
            took = loop_time - self.started.get(event["index"], loop_time)
            if event["status"] == "ok":
                return f"{where} finished in {took:.2f}s"
            return f"{where} failed after {took:.2f}s: {event.get('ename')}: {event.get('evalue')}"
        return "\n".join(f"{where} | {line}" for line in event["text"].rstrip("\n").splitlines())

    def where(self) -> str:
        if self.current is None:
            return "before the first cell"
        return f"cell {self.current['index']} ({self.current['tag']})"


def _explain(exc: Exception, tracker: _CellTracker, settings: Settings) -> PipelineError:
    if isinstance(exc, PapermillExecutionError):
        evalue = (exc.evalue or "").strip().splitlines()
        last = evalue[-1] if evalue else ""
        return PipelineError(STAGE, f"{tracker.where()} failed: {exc.ename}: {last}".rstrip(": "))
    if isinstance(exc, CellTimeoutError):
        return PipelineError(
            STAGE,
            f"{tracker.where()} ran past the execution timeout of "
            f"{settings.execution_timeout_s:.0f}s per cell (MLOPS_EXECUTION_TIMEOUT_S)",
        )
    if isinstance(exc, DeadKernelError):
        return PipelineError(
            STAGE, f"the kernel died during {tracker.where()} (out of memory, or os._exit?)"
        )
    if isinstance(exc, NoSuchKernel):
        return PipelineError(
            STAGE, f"no Jupyter kernel named {settings.kernel_name!r} is installed"
        )
    if isinstance(exc, RuntimeError) and "didn't respond" in str(exc):
        return PipelineError(
            STAGE,
            f"the kernel did not start within {settings.kernel_start_timeout_s:.0f}s "
            "(MLOPS_KERNEL_START_TIMEOUT_S)",
        )
    return PipelineError(STAGE, f"notebook execution failed: {type(exc).__name__}: {exc}")
