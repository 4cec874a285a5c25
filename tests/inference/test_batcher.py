"""The dynamic batcher, driven directly from many threads, as the gRPC server's threads call it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import pytest

from inference.batcher import BatchObserver, DynamicBatcher
from mlops_core.errors import ModelRuntimeError


class RecordingModel:
    """Doubles its input; remembers each call's row count and thread; fails on a NaN row."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls: list[int] = []
        self.threads: list[str] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        with self.lock:
            self.calls.append(x.shape[0])
            self.threads.append(threading.current_thread().name)
        if np.isnan(x).any():
            raise ModelRuntimeError("NaN in input")
        time.sleep(self.delay_s)
        return {"y": x * 2, "row_sum": x.sum(axis=1)}


def run_concurrently(calls: list[Callable[[], object]], timeout_s: float = 30) -> list[object]:
    """Each call on its own thread, all started together; results or exceptions, in order.
    A call still waiting after `timeout_s` fails the test (a stranded thread)."""
    start = threading.Barrier(len(calls))

    def one(call: Callable[[], object]) -> object:
        start.wait()
        try:
            return call()
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(one, call) for call in calls]
        return [future.result(timeout=timeout_s) for future in futures]


def test_idle_request_runs_alone_on_its_own_thread() -> None:
    model = RecordingModel()
    queue_times: list[float] = []
    batcher = DynamicBatcher(
        model,
        max_batch_size=64,
        max_queue_delay_us=50_000,
        observer=BatchObserver(on_queue_time=queue_times.append),
    )
    started = time.perf_counter()
    out = batcher.infer({"x": np.ones((1, 3), np.float32)}, 1)
    elapsed = time.perf_counter() - started
    np.testing.assert_array_equal(out["y"], np.full((1, 3), 2, np.float32))
    assert model.calls == [1]
    assert model.threads == [threading.current_thread().name], "no hand-off to another thread"
    assert len(queue_times) == 1 and queue_times[0] < 0.005
    assert elapsed < 0.04  # the 50 ms queue delay was not applied to an idle queue


def test_concurrent_requests_each_get_their_own_answer() -> None:
    model = RecordingModel(delay_s=0.005)
    batch_rows: list[int] = []
    batcher = DynamicBatcher(
        model, max_batch_size=16, observer=BatchObserver(on_batch=batch_rows.append)
    )
    requests = [np.full((1 + i % 3, 3), i, np.float32) for i in range(48)]
    results = run_concurrently([partial(batcher.infer, {"x": r}, r.shape[0]) for r in requests])
    for request, result in zip(requests, results, strict=True):
        assert isinstance(result, dict), result
        np.testing.assert_array_equal(result["y"], request * 2)
        np.testing.assert_array_equal(result["row_sum"], request.sum(axis=1))
    assert len(model.calls) < 48, "concurrent requests were batched"
    assert max(model.calls) <= 16
    assert sum(model.calls) == sum(r.shape[0] for r in requests)
    assert batch_rows == model.calls
    assert len(set(model.threads)) > 1, "the lead passed between the requests' threads"


def test_oversized_request_runs_alone() -> None:
    model = RecordingModel(delay_s=0.005)
    batcher = DynamicBatcher(model, max_batch_size=4)
    big = np.ones((10, 3), np.float32)
    small = [np.ones((1, 3), np.float32) for _ in range(3)]
    results = run_concurrently(
        [
            lambda: batcher.infer({"x": small[0]}, 1),
            lambda: batcher.infer({"x": big}, 10),
            *(lambda s=s: batcher.infer({"x": s}, 1) for s in small[1:]),
        ]
    )
    assert results[1]["y"].shape == (10, 3)
    assert 10 in model.calls
    assert all(rows <= 4 for rows in model.calls if rows != 10)


def test_a_failing_request_fails_alone() -> None:
    model = RecordingModel(delay_s=0.005)
    batcher = DynamicBatcher(model, max_batch_size=64)
    good = [np.full((1, 3), i, np.float32) for i in range(10)]
    bad = np.array([[np.nan, 1, 2]], np.float32)
    results = run_concurrently(
        [
            *(lambda g=g: batcher.infer({"x": g}, 1) for g in good[:5]),
            lambda: batcher.infer({"x": bad}, 1),
            *(lambda g=g: batcher.infer({"x": g}, 1) for g in good[5:]),
        ]
    )
    failures = [r for r in results if isinstance(r, Exception)]
    assert len(failures) == 1 and isinstance(failures[0], ModelRuntimeError)
    assert "NaN in input" in failures[0].message
    answers = [r for r in results if not isinstance(r, Exception)]
    for g, r in zip(good, answers, strict=True):
        np.testing.assert_array_equal(r["y"], g * 2)


def test_queue_delay_gathers_a_fuller_batch() -> None:
    model = RecordingModel(delay_s=0.002)
    batcher = DynamicBatcher(model, max_batch_size=64, max_queue_delay_us=30_000)

    def staggered(i: int) -> object:
        time.sleep(i * 0.001)
        return batcher.infer({"x": np.ones((1, 3), np.float32)}, 1)

    results = run_concurrently([partial(staggered, i) for i in range(12)])
    assert all(isinstance(r, dict) for r in results)
    # Arrivals over 11 ms, within the 30 ms delay of the oldest: few calls, not twelve.
    assert sum(model.calls) == 12
    assert len(model.calls) <= 3


def test_full_batch_does_not_wait_for_the_delay() -> None:
    model = RecordingModel(delay_s=0.1)
    batcher = DynamicBatcher(model, max_batch_size=8, max_queue_delay_us=5_000_000)
    started = time.perf_counter()
    row = np.ones((1, 3), np.float32)

    def after(delay_s: float) -> object:
        time.sleep(delay_s)
        return batcher.infer({"x": row}, 1)

    # The first runs alone at once; 8 arrive during its call and fill the next batch.
    results = run_concurrently([lambda: after(0), *(lambda: after(0.03) for _ in range(8))])
    assert all(isinstance(r, dict) for r in results)
    assert model.calls == [1, 8]
    assert time.perf_counter() - started < 2.5, "8 rows filled the batch: no 5 s wait"


def test_an_unexpected_error_reaches_every_waiter() -> None:
    """A failure outside the model call (here: requests that cannot be stacked, which the
    servicer's validation rules out) fails its batch and strands no thread."""
    model = RecordingModel(delay_s=0.02)
    batcher = DynamicBatcher(model, max_batch_size=64)
    widths = [3, 3, 4, 3, 3, 3, 3, 3]
    results = run_concurrently(
        [partial(batcher.infer, {"x": np.ones((1, w), np.float32)}, 1) for w in widths]
    )
    assert len(results) == 8
    assert any(isinstance(r, ValueError) for r in results), "the stacking error came back"
    assert all(isinstance(r, dict | ValueError) for r in results)


@pytest.mark.parametrize("threads", [2, 32])
def test_many_rounds_never_lose_a_request(threads: int) -> None:
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch_size=8)

    def client(k: int) -> int:
        for i in range(50):
            x = np.full((1, 3), k * 1000 + i, np.float32)
            np.testing.assert_array_equal(batcher.infer({"x": x}, 1)["y"], x * 2)
        return k

    assert run_concurrently([partial(client, k) for k in range(threads)]) == list(range(threads))
    assert sum(model.calls) == 50 * threads
