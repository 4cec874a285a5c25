"""Dynamic batching for one model version: concurrent requests share one onnxruntime call.

A request joins the queue and the batcher dispatches on the next turn of the event loop, so
every request that arrived in the same turn rides in the same call, and a lone request waits
for no timer. While a call runs, new requests queue; when it ends, the next call takes all of
them up to `max_batch_size` rows, optionally waiting `max_queue_delay_us` (counted from the
oldest queued request) for the batch to fill. A request larger than the limit runs alone.
The call, the stacking and the splitting happen in the executor, off the event loop, except
for models whose calls measure under `inline_below_us`: for those, handing the call to a thread
costs more than the call itself, so it runs on the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

import numpy as np

from mlops_core.errors import InvalidInput

Arrays = dict[str, np.ndarray]
RunFn = Callable[[Arrays], Arrays]
Outcome = Arrays | InvalidInput


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
        inline_below_us: int = 0,
        expected_call_s: float = 1.0,
    ) -> None:
        self._run = run
        self._executor = executor
        self.max_batch_size = max(1, max_batch_size)
        self._max_delay_s = max(0, max_queue_delay_us) / 1e6
        self._observer = observer or BatchObserver()
        self._pending: deque[_Pending] = deque()
        self._queued_rows = 0
        self._busy = False
        self._scheduled: asyncio.Handle | asyncio.TimerHandle | None = None
        # NOTE: kept once bound: asking asyncio for the running loop on every request and
        # completion showed up in profiles (it checks the process id each time).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inline_below_s = max(0, inline_below_us) / 1e6
        self._call_s = expected_call_s
        """Moving average of one call's duration, which decides inline versus executor."""

    async def infer(self, inputs: Arrays, rows: int) -> Arrays:
        """Run `inputs` (all with `rows` rows) as part of a batch; return this request's outputs."""
        loop = self._loop or self._bind_loop()
        pending = _Pending(inputs, rows, loop.create_future())
        self._pending.append(pending)
        self._queued_rows += rows
        if not self._busy:
            if self._scheduled is None:
                self._scheduled = loop.call_soon(self._dispatch)
            elif self._queued_rows >= self.max_batch_size:
                self._scheduled.cancel()  # the batch is full: stop waiting for the delay
                self._scheduled = loop.call_soon(self._dispatch)
        return await pending.future

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _dispatch(self) -> None:
        self._scheduled = None
        if self._busy or not self._pending:
            return
        batch = self._take_batch()
        loop = self._loop or self._bind_loop()
        started = time.perf_counter()
        for item in batch:
            self._observer.on_queue_time(started - item.enqueued_at)
        self._observer.on_batch(sum(item.rows for item in batch))
        inputs = [item.inputs for item in batch]
        if self._call_s < self._inline_below_s:
            self._complete(batch, self._execute(inputs))
            return
        self._busy = True
        call = self._executor.submit(self._execute, inputs)
        call.add_done_callback(lambda done: loop.call_soon_threadsafe(self._completed, batch, done))

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        rows = 0
        while self._pending:
            item = self._pending[0]
            if item.future.done():  # the caller went away (cancelled or timed out)
                self._pending.popleft()
                self._queued_rows -= item.rows
                continue
            if batch and rows + item.rows > self.max_batch_size:
                break
            self._pending.popleft()
            self._queued_rows -= item.rows
            rows += item.rows
            batch.append(item)
        return batch

    def _completed(self, batch: list[_Pending], call: Future[list[Outcome]]) -> None:
        self._busy = False
        try:
            outcomes: list[Outcome] = call.result()
        except Exception as exc:  # the executor itself failed (e.g. shut down)
            outcomes = [InvalidInput(f"inference failed: {exc}")] * len(batch)
        self._complete(batch, outcomes)

    def _complete(self, batch: list[_Pending], outcomes: list[Outcome]) -> None:
        for item, outcome in zip(batch, outcomes, strict=True):
            if item.future.done():
                continue
            if isinstance(outcome, InvalidInput):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)
        if self._pending and self._scheduled is None:
            loop = self._loop or self._bind_loop()
            wait = 0.0
            if self._max_delay_s and self._queued_rows < self.max_batch_size:
                wait = self._pending[0].enqueued_at + self._max_delay_s - time.perf_counter()
            if wait > 0:
                self._scheduled = loop.call_later(wait, self._dispatch)
            else:
                self._scheduled = loop.call_soon(self._dispatch)

    # --- executor side -------------------------------------------------------------------
    def _execute(self, items: list[Arrays]) -> list[Outcome]:
        started = time.perf_counter()
        try:
            return self._execute_batch(items)
        finally:
            # NOTE: a plain float store is atomic under the GIL; an approximate average is enough.
            self._call_s = 0.8 * self._call_s + 0.2 * (time.perf_counter() - started)

    def _execute_batch(self, items: list[Arrays]) -> list[Outcome]:
        if len(items) == 1:
            return [self._run_one(items[0])]
        sizes = [next(iter(item.values())).shape[0] for item in items]
        stacked = {name: np.concatenate([item[name] for item in items]) for name in items[0]}
        try:
            outputs = self._run_checked(stacked)
        except InvalidInput:
            # NOTE: one request's values broke the shared call; rerun each alone so only the
            # culprit fails and its batch-mates still get their answers.
            return [self._run_one(item) for item in items]
        results: list[Outcome] = []
        offset = 0
        for size in sizes:
            results.append({name: value[offset : offset + size] for name, value in outputs.items()})
            offset += size
        return results

    def _run_one(self, inputs: Arrays) -> Outcome:
        try:
            return self._run_checked(inputs)
        except InvalidInput as exc:
            return exc

    def _run_checked(self, inputs: Arrays) -> Arrays:
        try:
            return self._run(inputs)
        except Exception as exc:  # onnxruntime rejects values it cannot compute on
            raise InvalidInput(f"the model could not run on this input: {exc}") from exc
