"""The pipeline's MLflow run: started by the worker, shared with the notebook's kernel.

Blocking MLflow client calls; the worker runs them in a thread. Every function takes its
client explicitly, so concurrent pipelines never share MLflow's global active-run state.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.entities import Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient


def experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment named after the model, created on first use."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:
        # NOTE: another pipeline of the same model may have created it in between.
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def start_run(client: MlflowClient, experiment: str, run_name: str, values: dict[str, str]) -> str:
    """Create the run with `values` as both params and `mlops.*` tags; returns its id."""
    run = client.create_run(
        experiment_id(client, experiment),
        run_name=run_name,
        tags={f"mlops.{k}": v for k, v in values.items()},
    )
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in values.items()])
    return str(run.info.run_id)


def log_artifact(client: MlflowClient, run_id: str, path: Path, artifact_path: str) -> None:
    if path.is_dir():
        client.log_artifacts(run_id, str(path), artifact_path)
    else:
        client.log_artifact(run_id, str(path), artifact_path)


def end_run(client: MlflowClient, run_id: str, status: str, tags: dict[str, str]) -> None:
    """Mark the run FINISHED, FAILED or KILLED (the kernel's own exit may have ended it)."""
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    client.set_terminated(run_id, status)
