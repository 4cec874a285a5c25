"""In the box: load the notebook's joblib model, convert it to ONNX, check the two agree.

Loading the joblib file runs whatever code the notebook pickled, which is why this runs boxed.
It writes `model.onnx` and `signature.json` into the output folder and reports `converted`,
then `verified` (or `error` with the stage and a message a user can act on). Only those bytes
and this JSON leave the box.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline_worker.boxed import emit


def preload() -> None:
    """Import the conversion libraries (seconds), so conversion itself starts at once."""
    import joblib  # noqa: F401

    import pipeline_worker.stages.convert
    import pipeline_worker.stages.verify  # noqa: F401


def convert_and_verify(model_path: str, out_dir: str, sample_path: str | None) -> bool:
    import joblib

    from mlops_core.db import PipelineStatus
    from mlops_core.errors import PipelineError
    from mlops_core.signature import MODEL_FILE, SIGNATURE_FILE
    from pipeline_worker.stages.convert import convert
    from pipeline_worker.stages.verify import sample_rows, verify

    stage = PipelineStatus.CONVERTING
    try:
        try:
            model: Any = joblib.load(model_path)
        except Exception as exc:
            raise PipelineError(
                stage,
                f"cannot load the model the notebook saved ({type(exc).__name__}: {exc}); "
                "save it with joblib.dump(model, MODEL_OUTPUT_PATH)",
            ) from None
        converted = convert(model)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / MODEL_FILE).write_bytes(converted.onnx_bytes)
        converted.signature.write(out / SIGNATURE_FILE)
        emit("converted", estimator=converted.estimator, onnx_bytes=len(converted.onnx_bytes))

        stage = PipelineStatus.VERIFYING
        rows, source = sample_rows(model, Path(sample_path) if sample_path else None)
        report = verify(model, converted.onnx_bytes, rows, source)
        emit("verified", report=report.as_dict(), summary=report.summary())
    except PipelineError as exc:
        emit("error", stage=str(exc.stage), message=exc.message)
        return False
    except Exception as exc:
        emit("error", stage=str(stage), message=f"{type(exc).__name__}: {exc}")
        return False
    return True
