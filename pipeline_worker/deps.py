"""What every job of one worker process shares: settings, database, Redis, MLflow, the sandbox."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from arq.connections import ArqRedis
from mlflow.tracking import MlflowClient
from sqlalchemy.orm import Session, sessionmaker

from mlops_core.settings import Settings
from pipeline_worker.lease import owner_id
from pipeline_worker.sandbox import Sandbox
from pipeline_worker.warm_box import BoxSupply


@dataclass
class WorkerDeps:
    settings: Settings
    sessions: sessionmaker[Session]
    redis: ArqRedis
    mlflow: MlflowClient
    sandbox: Sandbox
    worker_id: str = field(default_factory=owner_id)
    boxes: BoxSupply = field(init=False)
    """Where pipelines get their boxes (warm ones once the worker's start-up opened it)."""

    def __post_init__(self) -> None:
        self.boxes = BoxSupply(self.sandbox, self.settings, self.workroot / "boxes")

    @property
    def workroot(self) -> Path:
        return self.settings.data_dir / "pipelines"
