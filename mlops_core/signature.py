"""The model signature: named, typed tensors in and out, class labels and batching overrides.

Written as `signature.json` beside `model.onnx` by the pipeline; read by inference replicas
(which also derive it from the ONNX graph when the file is absent) and by the gateway.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Open Inference Protocol datatype names and the numpy dtypes they carry.
OIP_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
NUMPY_TO_OIP: dict[np.dtype[Any], str] = {v: k for k, v in OIP_TO_NUMPY.items()}

SIGNATURE_FILE = "signature.json"
MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    """Open Inference Protocol datatype, e.g. `FP32`."""
    shape: list[int]
    """-1 marks a variable dimension (the first one is the batch)."""

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return OIP_TO_NUMPY[self.datatype]


@dataclass(frozen=True)
class ModelSignature:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    class_labels: list[Any] | None = None
    """Class labels in the order of the probability columns, where the model is a classifier."""
    max_batch_size: int | None = None
    """Per-model override of the batcher's row limit (0 turns batching off for this model)."""
    max_queue_delay_us: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelSignature:
        return cls(
            inputs=[TensorSpec(**t) for t in raw.get("inputs", [])],
            outputs=[TensorSpec(**t) for t in raw.get("outputs", [])],
            class_labels=raw.get("class_labels"),
            max_batch_size=raw.get("max_batch_size"),
            max_queue_delay_us=raw.get("max_queue_delay_us"),
            extra=raw.get("extra", {}),
        )

    @classmethod
    def read(cls, path: Path) -> ModelSignature:
        return cls.from_dict(json.loads(path.read_text()))

    def write(self, path: Path) -> None:
        path.write_text(self.to_json())
