"""The in-process onnxruntime figure: the ceiling no server of the same model can pass."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


def ort_ceiling(
    model_path: Path, rows: int, width: int, seconds: float = 2.0, threads: int = 1
) -> dict[str, float]:
    """Calls per second, rows per second and µs per call of one session with `threads`
    intra-op threads, back to back on this thread."""
    session = _session(model_path, threads)
    calls, elapsed, cpu = _back_to_back(session, rows, width, seconds)
    return _figure(calls, rows, elapsed, cpu)


def ort_ceiling_on_cpus(
    model_path: Path, rows: int, width: int, cpus: list[int], seconds: float = 2.0
) -> dict[str, Any]:
    """The best onnxruntime can do on `cpus`, the cores a fleet is pinned to: the faster of
    one single-threaded session per CPU (each in its own process, pinned there: no GIL, no
    sharing) and one session with one intra-op thread per CPU. `us_per_call` is wall time
    per call of the whole, so it reads as the cost of a call on those cores."""
    context = multiprocessing.get_context("spawn")  # no onnxruntime thread pools forked
    with context.Pool(len(cpus)) as pool:
        counts = pool.starmap(
            _pinned_calls, [(str(model_path), rows, width, seconds, cpu) for cpu in cpus]
        )
    calls = sum(c for c, _, _ in counts)
    elapsed, cpu = max(e for _, e, _ in counts), sum(c for _, _, c in counts)
    per_process: dict[str, Any] = _figure(calls, rows, elapsed, cpu)
    per_process["how"] = f"{len(cpus)} processes, one 1-thread session each, pinned"
    with context.Pool(1) as pool:
        ((calls, elapsed, cpu),) = pool.starmap(
            _pinned_calls, [(str(model_path), rows, width, seconds, None, cpus)]
        )
    one_session: dict[str, Any] = _figure(calls, rows, elapsed, cpu)
    one_session["how"] = f"one session, {len(cpus)} intra-op threads"
    return max(per_process, one_session, key=lambda f: f["rows_per_s"])


def _pinned_calls(
    model_path: str,
    rows: int,
    width: int,
    seconds: float,
    cpu: int | None,
    cpus: list[int] | None = None,
) -> tuple[int, float, float]:
    os.sched_setaffinity(0, {cpu} if cpu is not None else set(cpus or []))
    session = _session(Path(model_path), 1 if cpus is None else len(cpus))
    return _back_to_back(session, rows, width, seconds)


def _session(model_path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def _back_to_back(
    session: ort.InferenceSession, rows: int, width: int, seconds: float
) -> tuple[int, float, float]:
    """Calls made, wall seconds and CPU seconds of this process (all its threads)."""
    x = (np.random.default_rng(0).random((rows, width)) * 4 + 1).astype(np.float32)
    name = session.get_inputs()[0].name
    for _ in range(20):
        session.run(None, {name: x})
    calls = 0
    cpu_before = time.process_time()
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(10):
            session.run(None, {name: x})
        calls += 10
    return calls, elapsed, time.process_time() - cpu_before


def _figure(calls: int, rows: int, elapsed: float, cpu: float) -> dict[str, float]:
    """`cpu_us_per_call` is what a call costs whatever share of the CPUs the machine gave:
    the figure to compare a server's CPU per call with when other work shares the cores."""
    return {
        "calls_per_s": calls / elapsed,
        "rows_per_s": calls * rows / elapsed,
        "us_per_call": elapsed / calls * 1e6,
        "cpu_us_per_call": cpu / calls * 1e6,
    }
