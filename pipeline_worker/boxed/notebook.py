"""In the box: start a kernel ahead, then run one notebook in it with papermill and report
each cell as it happens.

`start_kernel` starts the kernel with the box's whole environment (built by the worker, no
secret in it) and imports the usual numeric libraries into it, before the job is known. The
job names the notebook, the executed copy to write, the injected parameters and the cell
timeout. Events: `cell` (start, output, end of a cell), or `error` with the stage, the
failure's type and text.

NOTE: pre-importing into the very kernel the user's notebook runs is safe only because a box
serves one pipeline and is thrown away: nothing of another pipeline was ever in it.
"""

from __future__ import annotations

import contextlib
import os
import time
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


_cells_started = False
"""Whether the notebook's first cell has started: until then no code of the notebook ran."""

KERNEL_START_ATTEMPTS = 2
"""A kernel that dies before it answers ran no code of the notebook, so another is started:
on a loaded machine a kernel sometimes dies at start (its cause not yet found), and that is
the platform's failure, never the notebook's."""


def _died_at_start(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and "Kernel died before replying" in str(exc)


def _report_cell(event: dict[str, Any]) -> None:
    global _cells_started
    _cells_started = True
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


# Imported into the kernel before its notebook is known (silently: no output, no history):
# what notebooks of the contract (the example's included) import, seconds of a cold start.
WARM_UP = (
    "import numpy, pandas, joblib, mlflow, sklearn.datasets, sklearn.linear_model, "
    "sklearn.metrics, sklearn.model_selection, sklearn.pipeline, sklearn.preprocessing"
)


def _drop(_message: dict[str, Any]) -> None:
    """The warm-up's own output (library warnings) is no pipeline's business."""


def preload() -> None:
    """Import papermill and our engine (a second or more), so the job starts at once."""
    import papermill  # noqa: F401

    import pipeline_worker.notebook_engine  # noqa: F401


def start_kernel(kernel_name: str, start_timeout_s: float, cwd: str) -> Any | None:
    """A started, warmed kernel's manager; None (with an `error` event) when it did not start
    (a kernel that died at start is replaced once)."""
    for attempt in range(1, KERNEL_START_ATTEMPTS + 1):
        try:
            return _start_kernel(kernel_name, start_timeout_s, cwd)
        except Exception as exc:
            if attempt < KERNEL_START_ATTEMPTS and _died_at_start(exc):
                print(f"the kernel died at start ({exc}); starting another", flush=True)
                continue
            emit("error", stage="executing", **_error(exc))
            return None
    return None


def _start_kernel(kernel_name: str, start_timeout_s: float, cwd: str) -> Any:
    from jupyter_client.blocking import BlockingKernelClient
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    # NOTE: nbclient drives kernels with the async manager and client on jupyter_core's loop;
    # the kernel is started on that same loop so papermill can take it over as it is.
    manager = AsyncKernelManager(kernel_name=kernel_name)
    run_sync(manager.start_kernel)(env=dict(os.environ), cwd=cwd)
    client = BlockingKernelClient()
    client.load_connection_info(manager.get_connection_info())
    # NOTE: no heartbeat channel: a client without its manager judges "alive" by heartbeats,
    # and before a kernel's first beat, or on a loaded machine, that says a booting kernel
    # died. Whether its process lives is asked of the manager instead.
    client.start_channels(hb=False)
    try:
        _wait_until_ready(client, manager, start_timeout_s)
        # NOTE: a failing or slow warm-up import is the notebook's business: it fails there
        # if it needs the library, or its first cell waits for the import to finish.
        with contextlib.suppress(TimeoutError):
            client.execute_interactive(
                WARM_UP, silent=True, timeout=start_timeout_s, output_hook=_drop
            )
    finally:
        client.stop_channels()
    return manager


READY_POLL_S = 1.0


def _wait_until_ready(client: Any, manager: Any, timeout_s: float) -> None:
    """Until the kernel answers kernel_info; RuntimeError when its process ended first, or
    when `timeout_s` passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            client.wait_for_ready(timeout=max(0.1, min(READY_POLL_S, left)))
            return
        except RuntimeError:
            if not kernel_alive(manager):
                raise RuntimeError("Kernel died before replying to kernel_info") from None
            if time.monotonic() >= deadline:
                raise RuntimeError(f"Kernel didn't respond in {timeout_s:.0f} seconds") from None


def kernel_alive(manager: Any) -> bool:
    """False only when the kernel's process is known to have ended; a check that fails says
    nothing (the notebook's run finds out for sure)."""
    from jupyter_core.utils import run_sync

    try:
        return bool(run_sync(manager.is_alive)())
    except Exception:
        return True


def enter_directory(manager: Any, directory: str, timeout_s: float) -> None:
    """Move the started kernel into the notebook's folder, where a fresh kernel would start
    (relative paths and imports next to the notebook resolve as they did before)."""
    from jupyter_client.blocking import BlockingKernelClient

    client = BlockingKernelClient()
    client.load_connection_info(manager.get_connection_info())
    client.start_channels(hb=False)  # NOTE: see _start_kernel
    try:
        client.execute_interactive(
            f"import os as _os; _os.chdir({directory!r}); del _os",
            silent=True,
            timeout=timeout_s,
            output_hook=_drop,
        )
    finally:
        client.stop_channels()


def run_notebook(spec: dict[str, Any], kernel: Any) -> bool:
    """Run the notebook in the started `kernel`; False (with an `error` event) when it did not
    run to its end."""

    notebook = Path(spec["notebook"])
    try:
        _run_notebook(spec, kernel, notebook)
    except Exception as exc:
        if not (_died_at_start(exc) and not _cells_started):
            emit("error", stage="executing", **_error(exc))
            return False
        print(f"the kernel died before the notebook's first cell ({exc}); again", flush=True)
        kernel = start_kernel(
            spec["kernel_name"], float(spec["start_timeout_s"]), str(notebook.parent)
        )
        if kernel is None:
            return False
        try:
            _run_notebook(spec, kernel, notebook)
        except Exception as exc:
            emit("error", stage="executing", **_error(exc))
            return False
    return True


def _run_notebook(spec: dict[str, Any], kernel: Any, notebook: Path) -> None:
    import papermill

    from pipeline_worker.notebook_engine import ENGINE_NAME

    enter_directory(kernel, str(notebook.parent), float(spec["start_timeout_s"]))
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
        kernel_manager=kernel,
    )
