"""One ONNX model version in onnxruntime: its session and its signature."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from mlops_core.errors import ModelLoadError
from mlops_core.signature import MODEL_FILE, SIGNATURE_FILE, ModelSignature, TensorSpec

# onnxruntime's element type names to Open Inference Protocol datatypes.
ORT_TO_OIP = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}


@dataclass(frozen=True)
class CallCost:
    """One call's duration as fixed + per_row * rows: what merging requests can save."""

    fixed_s: float
    per_row_s: float


class OnnxModel:
    """An onnxruntime session with the signature read from its graph (and signature.json)."""

    def __init__(self, directory: Path, intra_op_threads: int = 1) -> None:
        path = directory / MODEL_FILE
        if not path.is_file():
            raise ModelLoadError(f"{path} does not exist")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"onnxruntime cannot load {path}: {exc}") from exc
        self.signature = self._signature(directory)
        self._output_names = [o.name for o in self.signature.outputs]
        self.call_cost: CallCost | None = None
        """Measured by `warm()` for a batchable model."""

    def _signature(self, directory: Path) -> ModelSignature:
        inputs = [_spec(i) for i in self.session.get_inputs()]
        outputs = [_spec(o) for o in self.session.get_outputs()]
        declared = directory / SIGNATURE_FILE
        if not declared.is_file():
            return ModelSignature(inputs=inputs, outputs=outputs)
        try:
            extra = ModelSignature.read(declared)
        except (ValueError, TypeError, KeyError) as exc:
            raise ModelLoadError(f"{declared} is not a valid signature: {exc}") from exc
        # NOTE: the graph is the truth for names and types; the file adds what it lacks.
        return ModelSignature(
            inputs=inputs,
            outputs=outputs,
            class_labels=extra.class_labels,
            max_batch_size=extra.max_batch_size,
            max_queue_delay_us=extra.max_queue_delay_us,
            extra=extra.extra,
        )

    @property
    def batchable(self) -> bool:
        """Every tensor has a variable first dimension, so requests can be stacked."""
        return all(
            t.shape and t.shape[0] < 0 for t in [*self.signature.inputs, *self.signature.outputs]
        )

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.session.run(self._output_names, inputs)
        return dict(zip(self._output_names, results, strict=True))

    def warm(self, batch_rows: int = 64) -> None:
        """Inference on zeros, so the first real request pays no set-up cost. For a batchable
        model, also time 1-row and `batch_rows`-row calls into `call_cost`."""
        try:
            self.run(self._zeros(1))
            if self.batchable and batch_rows > 1:
                self.call_cost = self._measure_cost(batch_rows)
        except Exception as exc:  # a model that cannot run must not become active
            raise ModelLoadError(f"warm-up inference failed: {exc}") from exc

    def _zeros(self, rows: int) -> dict[str, Any]:
        return {
            t.name: np.zeros(
                [rows if i == 0 and d < 0 else max(d, 1) for i, d in enumerate(t.shape)],
                dtype=t.numpy_dtype,
            )
            for t in self.signature.inputs
        }

    def _measure_cost(self, rows: int) -> CallCost:
        one, many = self._zeros(1), self._zeros(rows)
        first = _seconds(self.run, many)
        # NOTE: the fastest of a few repeats, as noise only ever adds time; one for slow models.
        repeats = 5 if first < 0.05 else 1
        single = min(_seconds(self.run, one) for _ in range(repeats))
        batch = min(_seconds(self.run, many) for _ in range(repeats))
        per_row = max(0.0, (batch - single) / (rows - 1))
        return CallCost(fixed_s=max(0.0, single - per_row), per_row_s=per_row)


def _seconds(call: Callable[[dict[str, Any]], object], inputs: dict[str, Any]) -> float:
    started = time.perf_counter()
    call(inputs)
    return time.perf_counter() - started


def _spec(node: Any) -> TensorSpec:
    datatype = ORT_TO_OIP.get(node.type)
    if datatype is None:
        raise ModelLoadError(f"tensor {node.name!r} has unsupported type {node.type}")
    shape = [d if isinstance(d, int) and d >= 0 else -1 for d in node.shape]
    return TensorSpec(node.name, datatype, shape)
