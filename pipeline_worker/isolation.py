"""Run `model_jobs` functions in fresh child processes of a warm fork server.

A fork server imports scikit-learn, skl2onnx and onnxruntime once (several seconds here);
each job then runs in a new child forked from it (milliseconds) and exits after one job, so
nothing a model's pickle does outlives its pipeline, and the worker's event loop never blocks.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from mlops_core.errors import PipelineError

JOBS_MODULE = "pipeline_worker.model_jobs"


def _run_in_child(function: str, args: tuple[Any, ...]) -> dict[str, Any]:
    import importlib

    from pipeline_worker.scrub import kernel_environment

    clean = kernel_environment()
    os.environ.clear()
    os.environ.update(clean)
    result: dict[str, Any] = getattr(importlib.import_module(JOBS_MODULE), function)(*args)
    return result


class ModelJobs:
    """A pool of one-job children; `call` raises PipelineError for a failed job."""

    def __init__(self, max_workers: int) -> None:
        self._max_workers = max_workers
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([JOBS_MODULE])
        return ProcessPoolExecutor(self._max_workers, mp_context=context, max_tasks_per_child=1)

    async def call(self, stage: str, function: str, *args: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._pool, _run_in_child, function, args)
        except BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            raise PipelineError(
                stage, f"the {stage} process crashed (killed, or a native library fault)"
            ) from None
        if "error" in result:
            raise PipelineError(result["error"]["stage"], result["error"]["message"])
        return result

    async def warm(self) -> None:
        """Start the fork server now, so the first pipeline does not pay for its imports."""
        await self.call("converting", "ready")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
