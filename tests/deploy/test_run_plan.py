"""The process list `make run` starts, computed from settings; the readiness wait wrapper."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.readiness import HttpReady, RedisReady, redact
from launcher.services import Service, plan, webhook_secret
from mlops_core.settings import Settings
from tests.support.processes import REPO_ROOT, free_port


def settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"data_dir": tmp_path, "redis_url": None}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def by_name(services: list[Service]) -> dict[str, Service]:
    return {s.name: s for s in services}


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_defaults_start_every_service_on_the_documented_ports(tmp_path: Path) -> None:
    stack = plan(settings(tmp_path), python="py")
    names = [s.name for s in stack.services]
    assert names == ["redis", "mlflow", "inference.0", "inference.1", "worker", "gateway"]
    svc = by_name(stack.services)

    redis = svc["redis"].argv
    assert flag(redis, "--port") == "6379"
    assert flag(redis, "--dir") == str(tmp_path / "redis")
    assert flag(redis, "--appendonly") == "yes"
    assert stack.redis_url == "redis://127.0.0.1:6379/0"

    mlflow = svc["mlflow"].argv
    assert mlflow[:4] == ["py", "-m", "mlflow", "server"]
    assert flag(mlflow, "--backend-store-uri") == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert flag(mlflow, "--artifacts-destination") == str(tmp_path / "mlflow" / "artifacts")
    assert (flag(mlflow, "--port"), flag(mlflow, "--workers")) == ("5000", "1")
    assert svc["mlflow"].ready == HttpReady("http://127.0.0.1:5000/health")
    assert svc["mlflow"].env == {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

    for i in (0, 1):
        replica = svc[f"inference.{i}"]
        assert flag(replica.argv, "--grpc-port") == "50051"
        assert flag(replica.argv, "--private-grpc-port") == str(50061 + i)
        assert flag(replica.argv, "--http-port") == str(8001 + i)
        assert flag(replica.argv, "--replica-id") == f"replica-{i}"
        assert flag(replica.argv, "--model-source") == "mlflow"
        assert flag(replica.argv, "--redis-url") == stack.redis_url
        cpus = sorted(os.sched_getaffinity(0))
        assert flag(replica.argv, "--cpus") == str(cpus[i % len(cpus)])  # one CPU each
        assert replica.env["MLOPS_MODEL_REPOSITORY"] == str(tmp_path / f"replica-{i}" / "models")
        assert replica.env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
        assert replica.ready == HttpReady(f"http://127.0.0.1:{8001 + i}/ready")

    gateway = svc["gateway"]
    assert gateway.argv == ["py", "-m", "gateway"]
    assert gateway.env["MLOPS_FLEET_ADDRESS"] == "ipv4:127.0.0.1:50061,127.0.0.1:50062"
    assert gateway.env["MLOPS_GATEWAY_PORT"] == "8000"
    assert gateway.ready == HttpReady("http://127.0.0.1:8000/ready")
    assert svc["worker"].argv == ["py", "-m", "pipeline_worker"]
    for name in ("worker", "gateway", "inference.0"):
        assert svc[name].env["DATABASE_URL"] == f"sqlite:///{tmp_path}/mlops.db"
        assert svc[name].needs == (
            RedisReady("redis://127.0.0.1:6379/0"),
            HttpReady("http://127.0.0.1:5000/health"),
        )


def test_every_port_moves_and_the_fleet_follows_the_replica_count(tmp_path: Path) -> None:
    stack = plan(
        settings(
            tmp_path,
            replicas=3,
            redis_port=7000,
            mlflow_port=7001,
            gateway_port=7002,
            grpc_port=7003,
            http_port=7010,
            private_grpc_port_base=7020,
        )
    )
    svc = by_name(stack.services)
    assert [n for n in svc if n.startswith("inference")] == [f"inference.{i}" for i in range(3)]
    assert [flag(svc[f"inference.{i}"].argv, "--http-port") for i in range(3)] == [
        "7010",
        "7011",
        "7012",
    ]
    assert {flag(svc[f"inference.{i}"].argv, "--grpc-port") for i in range(3)} == {"7003"}
    fleet = "ipv4:127.0.0.1:7020,127.0.0.1:7021,127.0.0.1:7022"
    assert svc["gateway"].env["MLOPS_FLEET_ADDRESS"] == fleet
    assert flag(svc["redis"].argv, "--port") == "7000"
    assert svc["worker"].env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:7001"
    assert svc["gateway"].ready == HttpReady("http://127.0.0.1:7002/ready")


def test_an_external_redis_is_used_instead_of_the_embedded_one(tmp_path: Path) -> None:
    url = "redis://:pw@redis.internal:6380/2"
    stack = plan(settings(tmp_path, redis_url=url))
    assert "redis" not in by_name(stack.services)
    for service in stack.services[1:]:
        assert RedisReady(url) in service.needs
    assert by_name(stack.services)["worker"].env["REDIS_URL"] == url
    assert redact(url) == "redis://***@redis.internal:6380/2"
    assert redact("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"


def test_secrets_reach_the_gateway_only(tmp_path: Path) -> None:
    stack = plan(settings(tmp_path))
    parent = {"PATH": "/usr/bin", "GITHUB_WEBHOOK_SECRET": "s", "MLOPS_API_KEY": "k", "X": "1"}
    secret_values = {"GITHUB_WEBHOOK_SECRET": "s", "MLOPS_API_KEY": "k"}
    for service in stack.services:
        env = service.environment(parent, secret_values, "/venv/bin/python")
        assert env["X"] == "1"
        assert env["PATH"] == "/venv/bin:/usr/bin"
        has = {"GITHUB_WEBHOOK_SECRET", "MLOPS_API_KEY"} <= env.keys()
        assert has == (service.name == "gateway"), service.name


def test_commands_wait_for_redis_and_mlflow_first(tmp_path: Path) -> None:
    svc = by_name(plan(settings(tmp_path), python="/v/python").services)
    assert shlex.split(svc["redis"].command(60, python="/v/python"))[0] == "exec"
    gateway = shlex.split(svc["gateway"].command(60, python="/v/python"))
    assert gateway[:6] == ["exec", "/v/python", "-m", "launcher.wait", "--timeout", "60"]
    assert flag(gateway, "--redis") == "redis://127.0.0.1:6379/0"
    assert flag(gateway, "--http") == "http://127.0.0.1:5000/health"
    assert gateway[gateway.index("--") + 1 :] == ["/v/python", "-m", "gateway"]


def test_select_by_service_name(tmp_path: Path) -> None:
    stack = plan(settings(tmp_path))
    assert [s.name for s in stack.select(["inference", "redis"])] == [
        "redis",
        "inference.0",
        "inference.1",
    ]
    with pytest.raises(ValueError, match="frontend"):
        stack.select(["frontend"])


def test_a_generated_webhook_secret_is_private_and_kept(tmp_path: Path) -> None:
    stack = plan(settings(tmp_path))
    assert stack.secret_file == tmp_path / "webhook_secret"
    first = webhook_secret(settings(tmp_path), stack.secret_file)
    assert len(first) == 64
    assert stack.secret_file.stat().st_mode & 0o777 == 0o600
    assert webhook_secret(settings(tmp_path), stack.secret_file) == first

    configured = settings(tmp_path / "other", github_webhook_secret="given")
    other = plan(configured)
    assert other.secret_file is None
    assert webhook_secret(configured, other.secret_file) == "given"
    assert not (tmp_path / "other" / "webhook_secret").exists()


def wait_wrapper(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher.wait", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=30,
    )


def test_the_wait_wrapper_execs_once_ready(redis_url: str) -> None:
    done = wait_wrapper("--redis", redis_url, "--", sys.executable, "-c", "print('started')")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "started"


def test_the_wait_wrapper_gives_up_naming_what_is_missing() -> None:
    url = f"http://127.0.0.1:{free_port()}/health"
    done = wait_wrapper("--timeout", "0.5", "--http", url, "--", "true")
    assert done.returncode != 0
    assert f"not ready after 0.5 s: {url}" in done.stderr
