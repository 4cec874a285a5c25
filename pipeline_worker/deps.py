"""What every job of one worker process shares: settings, database, Redis, MLflow, model jobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from arq.connections import ArqRedis
from mlflow.tracking import MlflowClient
from sqlalchemy.orm import Session, sessionmaker

from mlops_core.settings import Settings
from pipeline_worker.isolation import ModelJobs
from pipeline_worker.lease import owner_id


@dataclass
class WorkerDeps:
    settings: Settings
    sessions: sessionmaker[Session]
    redis: ArqRedis
    mlflow: MlflowClient
    model_jobs: ModelJobs
    worker_id: str = field(default_factory=owner_id)

    @property
    def workroot(self) -> Path:
        return self.settings.data_dir / "pipelines"
