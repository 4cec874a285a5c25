"""In the box: a pipeline's pushed code from notebook to checked ONNX, in one process.

`python -m pipeline_worker.boxed.pipeline SPEC_JSON`. The box starts before its job is known:
it starts and warms the kernel (`boxed.notebook.start_kernel`) while the conversion libraries
import on a thread, reports `ready`, then waits for the job file the worker writes into its
directory once a pipeline takes the box. It runs the notebook (`boxed.notebook`), then loads
the model it exported, converts and verifies it (`boxed.model`). Events, in order: `ready`,
`cell`..., `executed`, `converted`, `verified`; or `error` with the stage and a message.

The spec (known before any pipeline): `job_file`, `kernel_name`, `start_timeout_s`, `cwd`,
`max_wait_s`.
The job (one pipeline's): `notebook`, `executed`, `parameters`, `onnx_dir`,
`kernel_name`, `start_timeout_s`, `execution_timeout_s`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline_worker.boxed import emit
from pipeline_worker.boxed.model import convert_and_verify, preload
from pipeline_worker.boxed.notebook import kernel_alive, run_notebook, start_kernel
from pipeline_worker.boxed.notebook import preload as preload_papermill

# NOTE: a file, not stdin, carries the job: every sandbox runner already shares the box's
# directory with the worker, and none needs a channel kept open into the box. Polled: the
# box idles for minutes at most, and 20 ms is nothing next to a notebook's run.
JOB_POLL_S = 0.02


# How often a waiting box checks that its kernel and its worker still live.
CHECK_S = 1.0


def wait_for_job(
    path: Path, kernel_alive: Callable[[], bool], max_wait_s: float
) -> dict[str, Any] | str:
    """The job the worker wrote (atomically, by rename) into the box's directory; or why
    there is none: the kernel died, or no job came within `max_wait_s` (the box then ends,
    and the worker replaces it, unused).

    NOTE: a worker that dies (SIGKILL) takes the box's `unshare` with it, but not the box: its
    first process changed user, which clears the parent-death signal. A waiting box would
    wait for ever, so it says `waiting` every second: once no worker reads its output, the
    write fails (broken pipe) and the box ends."""
    started = checked = time.monotonic()
    while not path.is_file():
        time.sleep(JOB_POLL_S)
        now = time.monotonic()
        if now - started > max_wait_s:
            return f"no job came within {max_wait_s:.0f}s"
        if now - checked > CHECK_S:
            emit("waiting")
            if not kernel_alive():
                return "the kernel died while the box waited for its job"
            checked = now
    job: dict[str, Any] = json.loads(path.read_text())
    return job


def main(spec: dict[str, Any]) -> int:
    warm = threading.Thread(target=preload, daemon=True)
    warm.start()
    kernel = start_kernel(spec["kernel_name"], float(spec["start_timeout_s"]), spec["cwd"])
    if kernel is None:
        return 1
    preload_papermill()
    emit("ready")
    job = wait_for_job(
        Path(spec["job_file"]), lambda: kernel_alive(kernel), float(spec["max_wait_s"])
    )
    if isinstance(job, str):
        emit("error", stage="executing", message=job)
        return 1
    if not run_notebook(job, kernel):
        return 1
    model = Path(job["parameters"]["MODEL_OUTPUT_PATH"])
    if not model.is_file():
        emit(
            "error",
            stage="executing",
            message="the notebook ran to the end but saved no model: the mlops:export cell "
            "must call joblib.dump(model, MODEL_OUTPUT_PATH)",
        )
        return 1
    emit("executed")
    warm.join()
    sample = Path(job["parameters"]["SAMPLE_INPUT_PATH"])
    ok = convert_and_verify(str(model), job["onnx_dir"], str(sample) if sample.is_file() else None)
    return 0 if ok else 1


if __name__ == "__main__":
    code = main(json.loads(sys.argv[1]))
    sys.stdout.flush()
    sys.stderr.flush()
    # NOTE: no interpreter teardown: the worker waits for the box to end before it reads the
    # box's files (nothing may still write them), and tearing down every library imported
    # here, with the kernel's atexit work, is most of a second. The box's end ends the kernel.
    os._exit(code)
