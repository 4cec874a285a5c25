"""Execute stage: the notebook runs with papermill, in a box, in a fresh kernel.

The box (`pipeline_worker.sandbox`, driven by `pipeline_worker.pipeline_box`) holds papermill,
the kernel and everything the notebook starts; it sees the checkout, writes only its box
directory and ends with every process in it. The kernel gets the injected parameters and the
notebook's own MLflow store, never the platform's. This module holds what the stage means:
the injected parameters, the log lines a cell's events become, and the messages a user reads
when the notebook or its box fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from mlops_core.db import PipelineStatus
from mlops_core.errors import PipelineError
from mlops_core.settings import Settings
from pipeline_worker.box_files import BoxDir
from pipeline_worker.sandbox import BoxOutcome

STAGE = PipelineStatus.EXECUTING
MODEL_FILE = "output/model.joblib"
SAMPLE_FILE = "output/sample_input.npy"
EXECUTED_FILE = "executed.ipynb"
LogFn = Callable[[str], Awaitable[None]]


def parameters(box: BoxDir, pipeline_id: str) -> dict[str, str]:
    """The parameters papermill injects (the seed README's three, plus an optional output),
    as paths inside the box."""
    return {
        "MODEL_OUTPUT_PATH": box.at(MODEL_FILE),
        "PIPELINE_ID": pipeline_id,
        "MLFLOW_TRACKING_URI": f"file://{box.at('mlruns')}",
        "SAMPLE_INPUT_PATH": box.at(SAMPLE_FILE),
    }


def box_failure(stage: PipelineStatus, outcome: BoxOutcome, settings: Settings) -> PipelineError:
    """Why a box that reported no result of its own ended."""
    if outcome.timed_out:
        return PipelineError(
            stage,
            f"the sandbox ran past its wall time of {settings.sandbox_wall_time_s:.0f}s "
            "(MLOPS_SANDBOX_WALL_TIME_S) and was stopped",
        )
    code = outcome.exit_code
    if code is not None and (code < 0 or code >= 128):
        return PipelineError(
            stage,
            "the sandboxed process was killed (out of memory: MLOPS_SANDBOX_MEMORY_MB is "
            f"{settings.sandbox_memory_mb}, or a signal)",
        )
    return PipelineError(stage, f"the sandboxed process ended with exit code {code}")


def sandbox_refusal(reason: str) -> str:
    return (
        f"pushed code runs only in a sandbox, and none can be made here: {reason}. Run the "
        "platform on Linux with namespaces enabled (or under Docker Compose), or set "
        "MLOPS_SANDBOX=off to run notebooks unsandboxed (development only: they can then "
        "read everything the worker can)"
    )


class CellTracker:
    """Turns cell events into log lines and remembers the cell running last."""

    def __init__(self) -> None:
        self.current: dict[str, Any] | None = None
        self.started: dict[str, float] = {}

    def describe(self, event: dict[str, Any]) -> str | None:
        phase = event.get("phase")
        index, tag = str(event.get("index", "?")), str(event.get("tag", "untagged"))
        where = "injected parameters" if index == "-" else f"cell {index} ({tag})"
        now = asyncio.get_running_loop().time()
        if phase == "start":
            self.current = {"index": index, "tag": tag}
            self.started[index] = now
            return f"{where} started"
        if phase == "end":
            took = now - self.started.get(index, now)
            if event.get("status") == "ok":
                return f"{where} finished in {took:.2f}s"
            return f"{where} failed after {took:.2f}s: {event.get('ename')}: {event.get('evalue')}"
        if phase == "output":
            text = str(event.get("text", "")).rstrip("\n")
            return "\n".join(f"{where} | {line}" for line in text.splitlines()) or None
        return None

    def where(self) -> str:
        if self.current is None:
            return "before the first cell"
        return f"cell {self.current['index']} ({self.current['tag']})"

    def where_short(self) -> str:
        return "sandbox" if self.current is None else self.where()


def explain(error: dict[str, Any], tracker: CellTracker, settings: Settings) -> PipelineError:
    kind = error.get("type")
    if kind == "cell_failed":
        evalue = str(error.get("evalue") or "").strip().splitlines()
        last = evalue[-1] if evalue else ""
        return PipelineError(
            STAGE, f"{tracker.where()} failed: {error.get('ename')}: {last}".rstrip(": ")
        )
    if kind == "cell_timeout":
        return PipelineError(
            STAGE,
            f"{tracker.where()} ran past the execution timeout of "
            f"{settings.execution_timeout_s:.0f}s per cell (MLOPS_EXECUTION_TIMEOUT_S)",
        )
    if kind == "kernel_died":
        return PipelineError(
            STAGE,
            f"the kernel died during {tracker.where()} (out of memory: MLOPS_SANDBOX_MEMORY_MB "
            f"is {settings.sandbox_memory_mb}; or os._exit?)",
        )
    if kind == "no_such_kernel":
        return PipelineError(
            STAGE, f"no Jupyter kernel named {settings.kernel_name!r} is installed"
        )
    if kind == "kernel_start_timeout":
        return PipelineError(
            STAGE,
            f"the kernel did not start within {settings.kernel_start_timeout_s:.0f}s "
            "(MLOPS_KERNEL_START_TIMEOUT_S)",
        )
    return PipelineError(STAGE, f"notebook execution failed: {str(error.get('message'))[:2000]}")
