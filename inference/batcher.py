"""Dynamic batching for one model version: concurrent requests share one onnxruntime call.

The batcher is work-conserving: a request that finds it idle runs at once, alone, with no
queueing delay. Requests that arrive while a call is running wait, and the next call takes
all of them (up to `max_batch_size` rows), optionally waiting `max_queue_delay_us` for the
batch to fill. A request that needs more rows than the limit runs alone.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from mlops_core.errors import InvalidInput

Arrays = dict[str, np.ndarray]
RunFn = Callable[[Arrays], Arrays]


@dataclass
class BatchObserver:
    """Hooks for metrics; each is called on the event loop."""

    on_batch: Callable[[int], None] = lambda rows: None
    on_queue_time: Callable[[float], None] = lambda seconds: None


@dataclass
class _Pending:
    inputs: Arrays
    rows: int
    future: asyncio.Future[Arrays]
    enqueued_at: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    def __init__(
        self,
        run: RunFn,
        executor: Executor,
        max_batch_size: int,
        max_queue_delay_us: int = 0,
        observer: BatchObserver | None = None,
    ) -> None:
        self._run = run
        self._executor = executor
        self.max_batch_size = max(1, max_batch_size)
        self._max_delay_s = max(0, max_queue_delay_us) / 1e6
        self._observer = observer or BatchObserver()
        self._pending: deque[_Pending] = deque()
        self._busy = False
        self._drain_task: asyncio.Task[None] | None = None

    async def infer(self, inputs: Arrays, rows: int) -> Arrays:
        """Run `inputs` (all with `rows` rows) as part of a batch; return this request's outputs."""
        loop = asyncio.get_running_loop()
        if not self._busy:
            # NOTE: the idle path skips the queue, the future and the task entirely, so a lone
            # request pays only the executor hand-off.
            self._busy = True
            self._observer.on_queue_time(0.0)
            self._observer.on_batch(rows)
            try:
                return await loop.run_in_executor(self._executor, self._run_checked, inputs)
            finally:
                self._busy = False
                if self._pending:
                    self._start_drain()
        pending = _Pending(inputs, rows, loop.create_future())
        self._pending.append(pending)
        return await pending.future

    def _start_drain(self) -> None:
        self._busy = True
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._pending:
                if self._max_delay_s and self._queued_rows() < self.max_batch_size:
                    await asyncio.sleep(self._max_delay_s)
                await self._run_batch(self._take_batch())
        finally:
            self._busy = False

    def _queued_rows(self) -> int:
        return sum(p.rows for p in self._pending)

    def _take_batch(self) -> list[_Pending]:
        batch = [self._pending.popleft()]
        rows = batch[0].rows
        while self._pending and rows + self._pending[0].rows <= self.max_batch_size:
            item = self._pending.popleft()
            rows += item.rows
            batch.append(item)
        return batch

    async def _run_batch(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        for item in batch:
            self._observer.on_queue_time(started - item.enqueued_at)
        self._observer.on_batch(sum(item.rows for item in batch))
        live = [item for item in batch if not item.future.done()]  # drop cancelled callers
        if not live:
            return
        if len(live) == 1:
            await self._settle(
                live[0], loop.run_in_executor(self._executor, self._run_checked, live[0].inputs)
            )
            return
        stacked = {
            name: np.concatenate([item.inputs[name] for item in live]) for name in live[0].inputs
        }
        try:
            outputs = await loop.run_in_executor(self._executor, self._run_checked, stacked)
        except InvalidInput:
            # NOTE: one request's values broke the shared call; rerun each alone so only the
            # culprit fails and its batch-mates still get their answers.
            for item in live:
                await self._settle(
                    item, loop.run_in_executor(self._executor, self._run_checked, item.inputs)
                )
            return
        offset = 0
        for item in live:
            end = offset + item.rows
            if not item.future.done():
                item.future.set_result({name: value[offset:end] for name, value in outputs.items()})
            offset = end

    @staticmethod
    async def _settle(item: _Pending, call: asyncio.Future[Arrays]) -> None:
        try:
            result = await call
        except Exception as exc:  # delivered to the caller, which maps it
            if not item.future.done():
                item.future.set_exception(exc)
            return
        if not item.future.done():
            item.future.set_result(result)

    def _run_checked(self, inputs: Arrays) -> Arrays:
        try:
            return self._run(inputs)
        except InvalidInput:
            raise
        except Exception as exc:  # onnxruntime rejects values it cannot compute on
            raise InvalidInput(f"the model could not run on this input: {exc}") from exc
