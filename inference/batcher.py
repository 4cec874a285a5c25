"""Dynamic batching for one model version: concurrent requests share one onnxruntime call.

Requests arrive on the gRPC server's threads. The first to arrive while no call runs becomes
the leader: it runs a batch of everything queued (itself included) on its own thread, while
onnxruntime releases the GIL and the other threads go on decoding. Requests that arrive while
a call runs queue; when the call ends, the leader hands the next batch to the oldest queued
request's thread, which leads in turn. So a lone request runs at once on its own thread, with
no timer and no hand-off, and under load every call takes all that queued during the previous
one, up to `max_batch_size` rows (optionally waiting `max_queue_delay_us`, counted from the
oldest queued request, for the batch to fill). A request larger than the limit runs alone.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mlops_core.errors import MlopsError

Arrays = dict[str, np.ndarray]
RunFn = Callable[[Arrays], Arrays]
"""One model call; raises an MlopsError when the call fails on its inputs."""
Outcome = Arrays | Exception
"""A request's outputs, or why it failed."""


@dataclass
class BatchObserver:
    """Hooks for metrics; each is called on the thread that ran the batch."""

    on_batch: Callable[[int], None] = lambda rows: None
    on_queue_time: Callable[[float], None] = lambda seconds: None


class _Pending:
    __slots__ = ("_wake", "enqueued_at", "inputs", "outcome", "rows")

    def __init__(self, inputs: Arrays, rows: int) -> None:
        self.inputs = inputs
        self.rows = rows
        self.enqueued_at = time.perf_counter()
        self.outcome: Outcome | None = None
        # NOTE: a bare lock, taken now and released to wake the waiter, is the cheapest
        # one-shot signal between threads in CPython (an Event builds a Condition per request).
        self._wake = threading.Lock()
        self._wake.acquire()

    def wait(self) -> None:
        self._wake.acquire()

    def wake(self) -> None:
        self._wake.release()


class DynamicBatcher:
    def __init__(
        self,
        run: RunFn,
        max_batch_size: int,
        max_queue_delay_us: int = 0,
        observer: BatchObserver | None = None,
    ) -> None:
        self._run = run
        self.max_batch_size = max(1, max_batch_size)
        self._max_delay_s = max(0, max_queue_delay_us) / 1e6
        self._observer = observer or BatchObserver()
        self._lock = threading.Lock()
        self._filled = threading.Condition(self._lock)
        self._pending: deque[_Pending] = deque()
        self._queued_rows = 0
        self._leading = False
        """True from the moment a thread takes the lead until one finds the queue empty."""
        self._waiting_for_fill = False

    def infer(self, inputs: Arrays, rows: int) -> Arrays:
        """Run `inputs` (all with `rows` rows) as part of a batch; return this request's outputs.

        Raises the MlopsError `run` raised when the model failed on this request's values.
        """
        me = _Pending(inputs, rows)
        with self._lock:
            self._pending.append(me)
            self._queued_rows += rows
            follow = self._leading
            self._leading = True
            if self._waiting_for_fill and self._queued_rows >= self.max_batch_size:
                self._filled.notify()
        if follow:
            me.wait()  # woken with an outcome, or to lead the next batch
        if me.outcome is None:
            self._lead(me, queued=follow)
        outcome = me.outcome
        if isinstance(outcome, Exception):
            raise outcome
        assert outcome is not None
        return outcome

    def _lead(self, me: _Pending, queued: bool) -> None:
        """Run batches until `me` has its outcome, then pass the lead to the oldest waiter.
        Only a queue that formed behind a running call waits for the delay: idle, no one does."""
        while True:
            with self._lock:
                if self._max_delay_s and queued:
                    self._wait_for_fill()
                batch = self._take_batch()
            queued = True
            self._run_batch(batch, me)
            with self._lock:
                if not self._pending:
                    self._leading = False
                    return
                if me.outcome is not None:
                    self._pending[0].wake()  # its outcome is None: it leads next
                    return

    def _wait_for_fill(self) -> None:
        """Called holding the lock: wait until the batch is full or the oldest has waited out
        the queue delay."""
        deadline = self._pending[0].enqueued_at + self._max_delay_s
        self._waiting_for_fill = True
        try:
            while self._queued_rows < self.max_batch_size:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    return
                self._filled.wait(remaining)
        finally:
            self._waiting_for_fill = False

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        rows = 0
        while self._pending:
            item = self._pending[0]
            if batch and rows + item.rows > self.max_batch_size:
                break
            self._pending.popleft()
            self._queued_rows -= item.rows
            rows += item.rows
            batch.append(item)
        return batch

    def _run_batch(self, batch: list[_Pending], me: _Pending) -> None:
        started = time.perf_counter()
        try:
            for item in batch:
                self._observer.on_queue_time(started - item.enqueued_at)
            self._observer.on_batch(sum(item.rows for item in batch))
            outcomes = self._execute([item.inputs for item in batch])
        except Exception as exc:  # a bug of ours: fail this batch, never strand its waiters
            outcomes = [exc] * len(batch)
        for item, outcome in zip(batch, outcomes, strict=True):
            item.outcome = outcome
            if item is not me:
                item.wake()

    def _execute(self, items: list[Arrays]) -> list[Outcome]:
        if len(items) == 1:
            return [self._run_one(items[0])]
        sizes = [next(iter(item.values())).shape[0] for item in items]
        stacked = {name: np.concatenate([item[name] for item in items]) for name in items[0]}
        try:
            outputs = self._run(stacked)
        except MlopsError:
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
            return self._run(inputs)
        except MlopsError as exc:
            return exc
