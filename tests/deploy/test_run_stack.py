"""`python -m launcher` for real: ready, state kept across a restart, nothing left behind; a
service that cannot start ends the start."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import httpx
import pytest
import redis

from benchmarks.processes import port_open
from tests.deploy.platform import Platform, platform_env
from tests.deploy.proctree import survivors


def assert_all_gone(platform: Platform, tree: dict[int, int], ports: list[int]) -> None:
    assert tree, "the runner had started no process"
    assert survivors(tree) == [], f"left running:\n{platform.output()[-3000:]}"
    assert not [p for p in ports if port_open(p)]


def test_infrastructure_restarts_with_its_state(tmp_path: Path) -> None:
    env = platform_env(tmp_path / "data")
    redis_port, mlflow_port = env["MLOPS_REDIS_PORT"], env["MLOPS_MLFLOW_PORT"]
    mlflow = f"http://127.0.0.1:{mlflow_port}"
    first = Platform("first", tmp_path, env, only=["redis", "mlflow"]).start()
    first.wait_ready()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=int(redis_port)).ping()
    password = (tmp_path / "data" / "redis_password").read_text().strip()
    client = redis.Redis(port=int(redis_port), password=password)
    assert client.config_get("bind") == {"bind": "127.0.0.1"}
    client.set("survives", "restart")
    created = httpx.post(f"{mlflow}/api/2.0/mlflow/experiments/create", json={"name": "kept"})
    assert created.status_code == 200, created.text
    tree = first.tree()
    assert first.stop(signal.SIGTERM) == 0
    assert_all_gone(first, tree, [int(redis_port), int(mlflow_port)])
    assert "platform ready in" in first.output()
    for kept in ("webhook_secret", "redis_password", "redis.conf", "secret.key"):
        assert (tmp_path / "data" / kept).stat().st_mode & 0o777 == 0o600, kept
    assert password not in first.output()

    second = Platform("second", tmp_path, env, only=["redis", "mlflow"]).start()
    second.wait_ready()
    assert client.get("survives") == b"restart"
    found = httpx.get(
        f"{mlflow}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": "kept"}
    )
    assert found.status_code == 200, found.text
    tree = second.tree()
    # Ctrl-C in a terminal sends SIGINT to the foreground process group: the runner's.
    second.process.signal(signal.SIGINT)
    assert second.process.proc is not None and second.process.proc.wait(timeout=30) == 0
    assert_all_gone(second, tree, [int(redis_port), int(mlflow_port)])


def test_a_service_that_cannot_start_is_reported_and_stops_the_start(tmp_path: Path) -> None:
    env = platform_env(tmp_path / "data")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(env["MLOPS_REDIS_PORT"])))
        taken.listen()
        platform = Platform("platform", tmp_path, env, only=["redis"]).start()
        assert platform.process.proc is not None
        # Retried with backoff (1+2+3+4+5 s) before supervisord gives up on it.
        assert platform.process.proc.wait(timeout=90) == 1
    out = platform.output()
    assert "exited: redis (exit status 1; not expected)" in out
    assert "gave up: redis entered FATAL state" in out
    assert "redis cannot start (it died 6 times within 10 s of starting" in out
    assert "platform ready" not in out
