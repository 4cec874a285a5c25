"""Concurrent REST predictions for one model, sent to the fleet as one ModelInfer.

NOTE: a REST prediction costs the gateway (gRPC client) and a replica (gRPC server) far more
CPU per call than the model does per row, so the gateway stacks the rows of predictions that
arrive together into one request and splits the answer back. A request that finds fewer than
`max_in_flight` calls running is sent on the next turn of the event loop, with whatever
arrived in that turn: an idle gateway adds no delay. Under load, requests queue while the
calls run, and each finished call sends the next batch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import numpy as np

from mlops_core.errors import UpstreamError
from mlops_core.oip import response_arrays
from mlops_core.protocol import open_inference_pb2 as pb

Send = Callable[[np.ndarray], Awaitable[pb.ModelInferResponse]]

SPLIT_ON = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL})
"""Codes a shared call may answer because of one request's values: refused by the replica's
checks, or the model failed while running on them (ModelRuntimeError)."""


@dataclass(frozen=True)
class Answer:
    """One prediction's share of a fleet response."""

    model: str
    version: str
    outputs: dict[str, np.ndarray]


@dataclass
class _Pending:
    rows: np.ndarray
    future: asyncio.Future[Answer]


class RequestCoalescer:
    def __init__(self, send: Send, max_rows: int = 256, max_in_flight: int = 4) -> None:
        self._send = send
        self.max_rows = max(1, max_rows)
        self.max_in_flight = max(1, max_in_flight)
        self._pending: deque[_Pending] = deque()
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, rows: np.ndarray) -> Answer:
        loop = asyncio.get_running_loop()
        pending = _Pending(rows, loop.create_future())
        self._pending.append(pending)
        if not self._scheduled and self._in_flight < self.max_in_flight:
            self._scheduled = True
            loop.call_soon(self._dispatch)
        return await pending.future

    def _dispatch(self) -> None:
        self._scheduled = False
        while self._pending and self._in_flight < self.max_in_flight:
            batch = self._take_batch()
            if not batch:
                break
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        rows = 0
        while self._pending:
            item = self._pending[0]
            if item.future.done():  # the client went away
                self._pending.popleft()
                continue
            if batch and rows + len(item.rows) > self.max_rows:
                break
            self._pending.popleft()
            rows += len(item.rows)
            batch.append(item)
        return batch

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            if len(batch) == 1:
                await self._answer_alone(batch[0])
            else:
                await self._answer_together(batch)
        except (KeyError, ValueError) as exc:
            _fail(batch, UpstreamError(f"the fleet answered outputs REST cannot carry: {exc}"))
        finally:
            self._in_flight -= 1
            if self._pending and not self._scheduled:
                self._dispatch()

    async def _answer_together(self, batch: list[_Pending]) -> None:
        try:
            stacked = np.concatenate([item.rows for item in batch])
        except ValueError:  # rows of different widths: nothing to share
            await asyncio.gather(*(self._answer_alone(item) for item in batch))
            return
        try:
            response = await self._send(stacked)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in SPLIT_ON:
                # One request's values broke the shared call: ask again one by one, so only
                # the culprit fails.
                await asyncio.gather(*(self._answer_alone(item) for item in batch))
                return
            _fail(batch, exc)
            return
        outputs = response_arrays(response)
        total = sum(len(item.rows) for item in batch)
        if any(value.ndim == 0 or value.shape[0] != total for value in outputs.values()):
            # Outputs without a row per input row cannot be split: ask one by one.
            await asyncio.gather(*(self._answer_alone(item) for item in batch))
            return
        offset = 0
        for item in batch:
            end = offset + len(item.rows)
            if not item.future.done():
                item.future.set_result(
                    Answer(
                        response.model_name,
                        response.model_version,
                        {name: value[offset:end] for name, value in outputs.items()},
                    )
                )
            offset = end

    async def _answer_alone(self, item: _Pending) -> None:
        try:
            response = await self._send(item.rows)
        except grpc.aio.AioRpcError as exc:
            _fail([item], exc)
            return
        if not item.future.done():
            item.future.set_result(
                Answer(response.model_name, response.model_version, response_arrays(response))
            )


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for item in batch:
        if not item.future.done():
            item.future.set_exception(exc)
