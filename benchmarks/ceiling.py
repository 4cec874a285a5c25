"""The in-process onnxruntime figure: the ceiling no server of the same model can pass."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def ort_ceiling(model_path: Path, rows: int, width: int, seconds: float = 2.0) -> dict[str, float]:
    """Calls per second, rows per second and µs per call, one thread, back to back."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    x = (np.random.default_rng(0).random((rows, width)) * 4 + 1).astype(np.float32)
    name = session.get_inputs()[0].name
    for _ in range(100):
        session.run(None, {name: x})
    calls = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(100):
            session.run(None, {name: x})
        calls += 100
    return {
        "calls_per_s": calls / elapsed,
        "rows_per_s": calls * rows / elapsed,
        "us_per_call": elapsed / calls * 1e6,
    }
