"""In the box: a pipeline's pushed code from notebook to checked ONNX, in one process.

`python -m pipeline_worker.boxed.pipeline SPEC_JSON`. It runs the notebook
(`boxed.notebook`), then loads the model it exported, converts and verifies it
(`boxed.model`). The conversion libraries are imported on a thread while the kernel works,
so the box starts once and conversion waits for no import. Events, in order: `cell`...,
`executed`, `converted`, `verified`; or `error` with the stage and a message.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

from pipeline_worker.boxed import emit
from pipeline_worker.boxed.model import convert_and_verify, preload
from pipeline_worker.boxed.notebook import run_notebook


def main(spec: dict[str, Any]) -> int:
    warm = threading.Thread(target=preload, daemon=True)
    warm.start()
    if not run_notebook(spec):
        return 1
    model = Path(spec["parameters"]["MODEL_OUTPUT_PATH"])
    if not model.is_file():
        emit(
            "error",
            stage="executing",
            message="the notebook ran to the end but saved no model: the mlops:export cell "
            "must call joblib.dump(model, MODEL_OUTPUT_PATH)",
        )
        return 1
    emit("executed")
    warm.join()
    sample = Path(spec["parameters"]["SAMPLE_INPUT_PATH"])
    ok = convert_and_verify(str(model), spec["onnx_dir"], str(sample) if sample.is_file() else None)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
