"""The dynamic batcher, driven directly with real onnxruntime work in a thread pool."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from inference.batcher import BatchObserver, DynamicBatcher
from mlops_core.errors import InvalidInput


class RecordingModel:
    """Doubles its input; remembers each call's row count; fails on a NaN row."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls: list[int] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        with self.lock:
            self.calls.append(x.shape[0])
        if np.isnan(x).any():
            raise ValueError("NaN in input")
        time.sleep(self.delay_s)
        return {"y": x * 2, "row_sum": x.sum(axis=1)}


@pytest.fixture(scope="module")
def executor():
    with ThreadPoolExecutor(2) as pool:
        yield pool


async def test_idle_request_runs_alone_without_queueing(executor) -> None:
    model = RecordingModel()
    queue_times: list[float] = []
    batcher = DynamicBatcher(
        model,
        executor,
        max_batch_size=64,
        max_queue_delay_us=50_000,
        observer=BatchObserver(on_queue_time=queue_times.append),
    )
    started = time.perf_counter()
    out = await batcher.infer({"x": np.ones((1, 3), np.float32)}, 1)
    elapsed = time.perf_counter() - started
    np.testing.assert_array_equal(out["y"], np.full((1, 3), 2, np.float32))
    assert model.calls == [1]
    assert len(queue_times) == 1 and queue_times[0] < 0.005
    assert elapsed < 0.05  # the 50 ms queue delay was not applied to an idle queue


async def test_concurrent_requests_each_get_their_own_answer(executor) -> None:
    model = RecordingModel(delay_s=0.005)
    batch_rows: list[int] = []
    batcher = DynamicBatcher(
        model, executor, max_batch_size=16, observer=BatchObserver(on_batch=batch_rows.append)
    )
    requests = [np.full((1 + i % 3, 3), i, np.float32) for i in range(48)]
    results = await asyncio.gather(*(batcher.infer({"x": r}, r.shape[0]) for r in requests))
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["y"], request * 2)
        np.testing.assert_array_equal(result["row_sum"], request.sum(axis=1))
    assert len(model.calls) < 48, "concurrent requests were batched"
    assert max(model.calls) <= 16
    assert sum(model.calls) == sum(r.shape[0] for r in requests)
    assert batch_rows == model.calls


async def test_oversized_request_runs_alone(executor) -> None:
    model = RecordingModel(delay_s=0.005)
    batcher = DynamicBatcher(model, executor, max_batch_size=4)
    big = np.ones((10, 3), np.float32)
    small = [np.ones((1, 3), np.float32) for _ in range(3)]
    results = await asyncio.gather(
        batcher.infer({"x": small[0]}, 1),
        batcher.infer({"x": big}, 10),
        *(batcher.infer({"x": s}, 1) for s in small[1:]),
    )
    assert results[1]["y"].shape == (10, 3)
    assert 10 in model.calls


async def test_a_failing_request_fails_alone(executor) -> None:
    model = RecordingModel(delay_s=0.005)
    batcher = DynamicBatcher(model, executor, max_batch_size=64)
    good = [np.full((1, 3), i, np.float32) for i in range(10)]
    bad = np.array([[np.nan, 1, 2]], np.float32)
    results = await asyncio.gather(
        *(batcher.infer({"x": g}, 1) for g in good[:5]),
        batcher.infer({"x": bad}, 1),
        *(batcher.infer({"x": g}, 1) for g in good[5:]),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, Exception)]
    assert len(failures) == 1 and isinstance(failures[0], InvalidInput)
    assert "NaN in input" in failures[0].message
    answers = [r for r in results if not isinstance(r, Exception)]
    for g, r in zip(good, answers, strict=True):
        np.testing.assert_array_equal(r["y"], g * 2)


async def test_queue_delay_gathers_a_fuller_batch(executor) -> None:
    model = RecordingModel(delay_s=0.002)
    batcher = DynamicBatcher(model, executor, max_batch_size=64, max_queue_delay_us=20_000)

    async def staggered(i: int) -> None:
        await asyncio.sleep(i * 0.001)
        await batcher.infer({"x": np.ones((1, 3), np.float32)}, 1)

    await asyncio.gather(*(staggered(i) for i in range(12)))
    # The first runs alone at once; the rest arrive over 11 ms and the delay gathers them.
    assert model.calls[0] == 1
    assert len(model.calls) <= 3


async def test_fast_model_runs_inline_and_still_batches_and_isolates(executor) -> None:
    model = RecordingModel()
    threads: set[str] = set()

    def run(inputs):
        threads.add(threading.current_thread().name)
        return model(inputs)

    batcher = DynamicBatcher(
        run, executor, max_batch_size=64, inline_below_us=10_000, expected_call_s=0.0
    )
    good = [np.full((1, 3), i, np.float32) for i in range(20)]
    bad = np.array([[np.nan, 1, 2]], np.float32)
    results = await asyncio.gather(
        *(batcher.infer({"x": g}, 1) for g in good),
        batcher.infer({"x": bad}, 1),
        return_exceptions=True,
    )
    assert threads == {threading.current_thread().name}, "calls ran on the event loop thread"
    assert isinstance(results[-1], InvalidInput)
    for g, r in zip(good, results[:-1], strict=True):
        np.testing.assert_array_equal(r["y"], g * 2)
    assert model.calls[0] == 21, "same-turn arrivals shared one call"


async def test_slow_model_moves_off_the_loop(executor) -> None:
    model = RecordingModel(delay_s=0.02)
    threads: list[str] = []

    def run(inputs):
        threads.append(threading.current_thread().name)
        return model(inputs)

    batcher = DynamicBatcher(
        run, executor, max_batch_size=64, inline_below_us=1_000, expected_call_s=0.0
    )
    for _ in range(4):
        await batcher.infer({"x": np.ones((1, 3), np.float32)}, 1)
    # The first call ran inline and measured 20 ms; the average then sent the rest to a thread.
    loop_thread = threading.current_thread().name
    assert threads[0] == loop_thread
    assert all(name != loop_thread for name in threads[1:])
