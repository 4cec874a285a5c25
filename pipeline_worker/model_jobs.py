"""Convert and verify, as they run in a child process (see `isolation.py`).

Loading the notebook's joblib file runs whatever code the notebook pickled, so it happens here,
in a short-lived child whose environment holds none of the platform's secrets, never in the
worker. Results cross back as plain dicts: `{"error": {"stage", "message"}}` on failure.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib

from mlops_core.db import PipelineStatus
from mlops_core.errors import PipelineError
from mlops_core.signature import MODEL_FILE, SIGNATURE_FILE
from pipeline_worker.stages.convert import convert
from pipeline_worker.stages.verify import sample_rows, verify


def _load(model_path: str) -> Any:
    try:
        return joblib.load(model_path)
    except Exception as exc:
        raise PipelineError(
            PipelineStatus.CONVERTING,
            f"cannot load the model the notebook saved ({type(exc).__name__}: {exc}); "
            "save it with joblib.dump(model, MODEL_OUTPUT_PATH)",
        ) from None


def _guarded(job: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return job()
    except PipelineError as exc:
        return {"error": {"stage": str(exc.stage), "message": exc.message}}


def convert_job(model_path: str, out_dir: str) -> dict[str, Any]:
    """Write `model.onnx` and `signature.json` into `out_dir`."""

    def job() -> dict[str, Any]:
        converted = convert(_load(model_path))
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / MODEL_FILE).write_bytes(converted.onnx_bytes)
        converted.signature.write(out / SIGNATURE_FILE)
        return {"estimator": converted.estimator, "onnx_bytes": len(converted.onnx_bytes)}

    return _guarded(job)


def verify_job(model_path: str, onnx_path: str, sample_path: str | None) -> dict[str, Any]:
    """Compare the joblib and ONNX models; the parity report as a dict."""

    def job() -> dict[str, Any]:
        model = _load(model_path)
        rows, source = sample_rows(model, Path(sample_path) if sample_path else None)
        report = verify(model, Path(onnx_path).read_bytes(), rows, source)
        return {"report": report.as_dict(), "summary": report.summary()}

    return _guarded(job)


def ready() -> dict[str, Any]:
    """Nothing: forking the first child makes the fork server import the above."""
    return {}
