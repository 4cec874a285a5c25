"""Fixtures for pipeline worker tests: a platform (own Redis database, SQLite, data dir) per
module and real `python -m pipeline_worker` processes on it."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from benchmarks.processes import ManagedProcess
from mlops_core.db import make_engine, make_session_factory
from tests.conftest import new_redis_db

# Secrets the worker holds; none may reach the kernel or any log.
SECRETS = {
    "GITHUB_WEBHOOK_SECRET": "whsec-test-4f9a2c81",
    "MLOPS_API_KEY": "apikey-test-77d1e0aa",
    "DEPLOY_TOKEN": "deploytoken-9c3b5e",
    "DB_PASSWORD": "dbpassword-51aa0f",
}
REPO_TOKEN = "ghp_testtoken0123456789abcdef"
_worker_numbers = itertools.count()


@dataclass
class Platform:
    redis_url: str
    database_url: str
    data_dir: Path
    mlflow_uri: str
    sessions: sessionmaker[Session]

    def worker_env(self, **overrides: str) -> dict[str, str]:
        return {
            "REDIS_URL": self.redis_url,
            "DATABASE_URL": self.database_url,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "MLOPS_DATA_DIR": str(self.data_dir),
            "MLOPS_ALLOW_LOCAL_REPOS": "true",
            "MLOPS_WORKER_CONCURRENCY": "2",
            "MLOPS_DEPLOY_TIMEOUT_S": "60",
            "MLOPS_EXECUTION_TIMEOUT_S": "120",
            **SECRETS,
            **overrides,
        }


@pytest.fixture(scope="module")
def platform(redis_url: str, mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Platform:
    data_dir = tmp_path_factory.mktemp("platform")
    database_url = f"sqlite:///{data_dir / 'mlops.db'}"
    return Platform(
        redis_url=new_redis_db(redis_url),
        database_url=database_url,
        data_dir=data_dir,
        mlflow_uri=mlflow_uri,
        sessions=make_session_factory(make_engine(database_url)),
    )


StartWorker = Callable[..., ManagedProcess]


@pytest.fixture(scope="module")
def start_worker(platform: Platform, run_dir: Path) -> Iterator[StartWorker]:
    """Start `python -m pipeline_worker` processes; each waits until it is ready."""
    started: list[ManagedProcess] = []

    def start(name: str = "worker", **env: str) -> ManagedProcess:
        worker = ManagedProcess(
            f"pipeline-{name}-{next(_worker_numbers)}",
            [sys.executable, "-m", "pipeline_worker"],
            run_dir,
            env=platform.worker_env(**env),
        ).start()
        started.append(worker)
        worker.wait_until(lambda: "pipeline worker" in worker.log_tail(100_000), 90, "worker ready")
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="module")
def fleet(start_inference, platform: Platform, request, tmp_path_factory):
    """A real replica in fleet mode on the module's platform, loading versions from MLflow."""
    name = f"{request.module.__name__.rsplit('.', 1)[-1]}-fleet"
    return start_inference(
        tmp_path_factory.mktemp(name),
        name=name,
        redis_url=platform.redis_url,
        extra_args=["--model-source", "mlflow"],
        env={"MLFLOW_TRACKING_URI": platform.mlflow_uri, "MLOPS_RESYNC_INTERVAL_S": "1"},
    )
