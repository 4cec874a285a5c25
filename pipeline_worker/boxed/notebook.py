"""In the box: run one notebook with papermill and report each cell as it happens.

The spec names the notebook, the executed copy to write, the injected parameters, the kernel
and the timeouts. Events: `cell` (start, output, end of a cell), or `error` with the stage,
the failure's type and text.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline_worker.boxed import emit


def _error(exc: BaseException) -> dict[str, Any]:
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        return {"type": "cell_failed", "ename": exc.ename, "evalue": str(exc.evalue or "")}
    if isinstance(exc, CellTimeoutError):
        return {"type": "cell_timeout"}
    if isinstance(exc, DeadKernelError):
        return {"type": "kernel_died"}
    if isinstance(exc, NoSuchKernel):
        return {"type": "no_such_kernel"}
    if isinstance(exc, RuntimeError) and "didn't respond" in str(exc):
        return {"type": "kernel_start_timeout"}
    return {"type": "other", "message": f"{type(exc).__name__}: {exc}"}


# An output event carries at most this much text: one event is one line the worker reads, and
# the worker reads lines in bounded pieces (kernels send thousands of printed lines at once).
MAX_EVENT_TEXT = 16 * 1024


def _report_cell(event: dict[str, Any]) -> None:
    fields = {k: v for k, v in event.items() if k not in ("kind", "text")}
    if event["kind"] != "output":
        emit("cell", phase=event["kind"], **fields)
        return
    chunk: list[str] = []
    size = 0
    for line in str(event.get("text", "")).splitlines():
        line = line[:MAX_EVENT_TEXT]
        if chunk and size + len(line) > MAX_EVENT_TEXT:
            emit("cell", phase="output", text="\n".join(chunk), **fields)
            chunk, size = [], 0
        chunk.append(line)
        size += len(line) + 1
    if chunk:
        emit("cell", phase="output", text="\n".join(chunk), **fields)


def run_notebook(spec: dict[str, Any]) -> bool:
    """Run the notebook; False (with an `error` event) when it did not run to its end."""
    import papermill

    from pipeline_worker.notebook_engine import ENGINE_NAME

    notebook = Path(spec["notebook"])
    try:
        papermill.execute_notebook(
            str(notebook),
            spec["executed"],
            parameters=spec["parameters"],
            engine_name=ENGINE_NAME,
            kernel_name=spec["kernel_name"],
            language="python",
            progress_bar=False,
            log_output=False,
            start_timeout=int(spec["start_timeout_s"]),
            execution_timeout=int(spec["execution_timeout_s"]),
            sink=_report_cell,
            kernel_env=dict(os.environ),
            kernel_cwd=str(notebook.parent),
        )
    except Exception as exc:
        emit("error", stage="executing", **_error(exc))
        return False
    return True
