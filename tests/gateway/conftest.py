"""Gateway fixtures: a real gateway process (`python -m gateway`) on a free port, in front of a
real Redis, a real MLflow server and a fleet of two real inference replicas."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis as sync_redis

from mlops_core import fleet_state
from mlops_core.db import make_engine, make_session_factory
from tests.conftest import InferenceServer, StartInference, new_redis_db
from tests.support.processes import VENV_BIN, ManagedProcess, free_port

SECRET = "gateway-test-webhook-secret"
API_KEY = "gateway-test-api-key"
MAX_WEBHOOK_BYTES = 64 * 1024


@dataclass
class Gateway:
    process: ManagedProcess
    url: str
    redis_url: str
    database_url: str
    env: dict[str, str]

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1)

    def client(self, *, auth: bool = True, timeout: float = 30) -> httpx.Client:
        headers = {"Authorization": f"Bearer {API_KEY}"} if auth else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def async_client(self, *, timeout: float = 30) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=timeout
        )

    def sessions(self):
        return make_session_factory(make_engine(self.database_url))


def gateway_env(tmp: Path, redis_url: str, **overrides: str) -> dict[str, str]:
    return {
        "MLOPS_DATA_DIR": str(tmp),
        "DATABASE_URL": f"sqlite:///{tmp / 'gateway.db'}",
        "REDIS_URL": redis_url,
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "GITHUB_WEBHOOK_SECRET": SECRET,
        "MLOPS_API_KEY": API_KEY,
        "MLOPS_DEV_MODE": "false",
        "MLOPS_ALLOW_LOCAL_REPOS": "true",
        "MLOPS_MAX_WEBHOOK_BYTES": str(MAX_WEBHOOK_BYTES),
        "MLOPS_DEPLOY_TIMEOUT_S": "20",
        "MLOPS_LOG_LEVEL": "INFO",
        **overrides,
    }


def launch_gateway(run_dir: Path, name: str, env: dict[str, str]) -> Gateway:
    port = free_port()
    process = ManagedProcess(
        name,
        [str(VENV_BIN / "python"), "-m", "gateway", "--host", "127.0.0.1", "--port", str(port)],
        run_dir,
        env=env,
    ).start()
    url = f"http://127.0.0.1:{port}"
    process.wait_until(
        lambda: httpx.get(f"{url}/health", timeout=1).status_code == 200, 30, "gateway /health"
    )
    return Gateway(process, url, env["REDIS_URL"], env["DATABASE_URL"], env)


def run_gateway_briefly(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `python -m gateway` expecting it to refuse to start."""
    return subprocess.run(
        [str(VENV_BIN / "python"), "-m", "gateway", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture(scope="session")
def gateway_redis(redis_url: str) -> str:
    """A Redis database of the gateway tests' own (queue, logs)."""
    return new_redis_db(redis_url)


def start_fleet(
    start_inference: StartInference, iris_repo: Path, redis_url: str, name: str
) -> list[InferenceServer]:
    """Two replicas in fleet mode serving `iris` (2 active, 1 warm) and `petal` 1."""
    client = sync_redis.Redis.from_url(redis_url)
    client.hset(fleet_state.DESIRED_KEY, "iris", '{"active": "2", "warm": ["1"]}')
    client.hset(fleet_state.DESIRED_KEY, "petal", '{"active": "1", "warm": []}')
    env = {"MLOPS_RESYNC_INTERVAL_S": "1", "MLOPS_HEARTBEAT_TTL_S": "3"}
    return [
        start_inference(iris_repo, name=f"{name}-{i}", redis_url=redis_url, env=env)
        for i in range(2)
    ]


def fleet_target(fleet: list[InferenceServer]) -> str:
    """One gRPC target over every replica, as `make run` gives the gateway."""
    return "ipv4:" + ",".join(s.grpc_address for s in fleet)


@pytest.fixture(scope="session")
def gateway(
    run_dir: Path, tmp_path_factory: pytest.TempPathFactory, gateway_redis: str
) -> Iterator[Gateway]:
    """A gateway with no fleet and no MLflow behind it: for routes that need neither."""
    env = gateway_env(tmp_path_factory.mktemp("gateway"), gateway_redis)
    gw = launch_gateway(run_dir, "gateway", env)
    yield gw
    gw.process.stop()


@pytest.fixture(scope="session")
def api(gateway: Gateway) -> Iterator[httpx.Client]:
    with gateway.client() as client:
        yield client
