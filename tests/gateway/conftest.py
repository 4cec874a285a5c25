"""Gateway fixtures: a real gateway process (`python -m gateway`) on a free port, in front of a
real Redis, a real MLflow server and a fleet of two real inference replicas."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis as sync_redis

from benchmarks.processes import VENV_BIN, ManagedProcess, free_port
from mlops_core import fleet_state
from mlops_core.db import make_engine, make_session_factory
from mlops_core.pipeline_queue import QUEUE_NAME
from tests.conftest import InferenceServer, StartInference, new_redis_db

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


@pytest.fixture
async def aapi(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway.async_client() as client:
        yield client


GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args: str, cwd: Path) -> str:
    out = subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
    )
    return out.stdout.strip()


@dataclass
class LocalRepo:
    """A bare repository (what the platform clones) and a working copy that pushes to it."""

    name: str
    bare: Path
    work: Path

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def commit(self, files: dict[str, str], branch: str = "main") -> str:
        git("checkout", "-q", "-B", branch, cwd=self.work)
        for path, content in files.items():
            target = self.work / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", f"change {', '.join(files)}", cwd=self.work)
        git("push", "-q", "origin", branch, cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def push_payload(
        self, sha: str, *, branch: str = "main", added=(), modified=(), full_name: str | None = None
    ) -> dict:
        """A push event shaped as GitHub sends it."""
        commit = {
            "id": sha,
            "message": "update",
            "timestamp": "2026-11-26T12:00:00Z",
            "added": list(added),
            "removed": [],
            "modified": list(modified),
        }
        return {
            "ref": f"refs/heads/{branch}",
            "before": "0" * 39 + "1",
            "after": sha,
            "created": False,
            "deleted": False,
            "forced": False,
            "repository": {
                "id": 1,
                "name": self.name,
                "full_name": full_name or f"local/{self.name}",
                "private": False,
                "clone_url": self.url,
                "html_url": self.url.removesuffix(".git"),
                "default_branch": "main",
            },
            "pusher": {"name": "test", "email": "test@example.com"},
            "sender": {"login": "test"},
            "head_commit": commit,
            "commits": [commit],
        }


def make_local_repo(root: Path, name: str, files: dict[str, str] | None = None) -> LocalRepo:
    bare, work = root / f"{name}.git", root / f"{name}-work"
    bare.mkdir(parents=True)
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=root)
    git("clone", "-q", str(bare), str(work), cwd=root)
    repo = LocalRepo(name, bare, work)
    repo.commit(files or {"notebooks/train.ipynb": NOTEBOOK, "README.md": "hello\n"})
    return repo


NOTEBOOK = '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}\n'


def signed_post(
    client: httpx.Client,
    payload: dict | bytes,
    *,
    event: str = "push",
    delivery: str | None = None,
    secret: str = SECRET,
    signature: str | None = None,
) -> httpx.Response:
    """POST a delivery signed exactly as GitHub signs it: HMAC-SHA256 of the raw body."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    if signature is None:
        signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "User-Agent": "GitHub-Hookshot/test",
    }
    if signature:
        headers["X-Hub-Signature-256"] = signature
    return client.post("/webhook/github", content=body, headers=headers)


def queued_job_ids(redis_url: str) -> set[str]:
    return {m.decode() for m in sync_redis.Redis.from_url(redis_url).zrange(QUEUE_NAME, 0, -1)}
