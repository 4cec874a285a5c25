"""Register stage: the run's ONNX artifacts and a new version of the registered model.

The version's source is the run's `onnx/` folder, holding `model.onnx` and `signature.json` at
its root, so `models:/<name>/<version>` downloads exactly what an inference replica loads.
That is all a replica needs, so it is all that precedes the deploy: the joblib copy of the
model (`keep_joblib`) is uploaded after it, with the rest of the run's record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient

from mlops_core.db import PipelineStatus
from mlops_core.errors import PipelineError
from pipeline_worker.tracking import log_artifact

STAGE = PipelineStatus.REGISTERING
MODEL_ARTIFACT_PATH = "onnx"


@dataclass(frozen=True)
class RegisterInput:
    model_name: str
    run_id: str
    onnx_dir: Path
    """Holds model.onnx and signature.json."""
    tags: dict[str, str]
    """Tags for the model version (pipeline id, commit, repository)."""


def register(client: MlflowClient, item: RegisterInput) -> str:
    """Log the artifacts and create the model version; returns the version ("1", "2", ...)."""
    try:
        log_artifact(client, item.run_id, item.onnx_dir, MODEL_ARTIFACT_PATH)
        try:
            client.create_registered_model(item.model_name)
        except MlflowException as exc:
            if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
        artifact_uri = client.get_run(item.run_id).info.artifact_uri
        version = client.create_model_version(
            item.model_name,
            source=f"{artifact_uri}/{MODEL_ARTIFACT_PATH}",
            run_id=item.run_id,
            tags=item.tags,
        )
    except MlflowException as exc:
        raise PipelineError(STAGE, f"MLflow refused the model: {exc.message}") from None
    return str(version.version)


def keep_joblib(client: MlflowClient, run_id: str, joblib_path: Path) -> None:
    """The notebook's own model file beside the run (after the deploy: no replica reads it)."""
    log_artifact(client, run_id, joblib_path, "joblib")
