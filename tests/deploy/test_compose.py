"""docker-compose.yml and the Dockerfile, checked against the code (no Docker engine here)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from benchmarks.processes import REPO_ROOT
from launcher.readiness import HttpReady
from tests.deploy.manifests import (
    DEFAULTS,
    REPLICA_SECRET_NAMES,
    SECRET_NAMES,
    SETTING_NAMES,
    healthcheck,
    inference_args,
    mlflow_flags,
    python_module,
    worker_probe,
)

APP_SERVICES = ("mlflow", "inference", "worker", "gateway")
ALL_SECRETS = SECRET_NAMES | {"MLOPS_SECRET_KEY"}
"""Secrets a .env file may hold: every container reads it."""


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def container_port(ports: list[str]) -> set[int]:
    return {int(spec.rsplit(":", 1)[1]) for spec in ports}


def test_every_role_runs_from_the_one_image(services: dict[str, Any]) -> None:
    assert set(services) == {"redis", *APP_SERVICES}
    assert {services[name]["build"] for name in APP_SERVICES} == {"."}
    assert len({services[name]["image"] for name in APP_SERVICES}) == 1
    for name in ("inference", "worker", "gateway"):
        python_module(services[name]["command"])


def test_every_service_has_a_health_check_on_its_own_port(services: dict[str, Any]) -> None:
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    mlflow_port = int(mlflow_flags(services["mlflow"]["command"])["--port"])
    inference = inference_args(services["inference"]["command"])
    gateway_port = int(services["gateway"]["environment"]["MLOPS_GATEWAY_PORT"])
    assert gateway_port == DEFAULTS.gateway_port
    expected = {
        "mlflow": HttpReady(f"http://127.0.0.1:{mlflow_port}/health"),
        "inference": HttpReady(f"http://127.0.0.1:{inference.http_port}/health"),
        "gateway": HttpReady(f"http://127.0.0.1:{gateway_port}/ready"),
    }
    for name, check in expected.items():
        assert healthcheck(services[name]["healthcheck"]["test"]) == [check], name
    # The worker serves no port: healthy is its heartbeat, strictly (Redis away: unhealthy).
    test = services["worker"]["healthcheck"]["test"]
    assert test[0] == "CMD" and not worker_probe(test[1:]).liveness
    assert container_port(services["mlflow"]["ports"]) == {mlflow_port}
    assert container_port(services["gateway"]["ports"]) == {gateway_port}
    assert container_port(services["inference"]["ports"]) == {
        inference.http_port,
        inference.grpc_port,
    }


def test_every_service_restarts_unless_stopped_by_hand(services: dict[str, Any]) -> None:
    # A crashed or killed container comes back by itself; `docker compose stop` still holds.
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name


def test_the_fleet_is_scaled_and_found_by_dns(services: dict[str, Any]) -> None:
    inference = services["inference"]
    assert inference["deploy"]["replicas"] >= 2
    args = inference_args(inference["command"])
    assert (args.grpc_port, args.http_port) == (DEFAULTS.grpc_port, DEFAULTS.http_port)
    assert args.model_source == "mlflow"
    # A host port range per container port, wide enough for every replica.
    for spec in inference["ports"]:
        first, last = (int(p) for p in spec.split(":")[0].split("-"))
        assert last - first + 1 >= inference["deploy"]["replicas"], spec
    fleet = services["gateway"]["environment"]["MLOPS_FLEET_ADDRESS"]
    assert fleet == f"dns:///inference:{args.grpc_port}"


def test_services_find_each_other_by_service_name(services: dict[str, Any]) -> None:
    redis_command = services["redis"]["command"]
    assert "--appendonly" in redis_command
    redis_port = 6379
    flags = mlflow_flags(services["mlflow"]["command"])
    for name in APP_SERVICES[1:]:
        env = services[name]["environment"]
        redis = urlsplit(env["REDIS_URL"])
        assert (redis.hostname, redis.port) == ("redis", redis_port)
        mlflow = urlsplit(env["MLFLOW_TRACKING_URI"])
        assert (mlflow.hostname, mlflow.port) == ("mlflow", int(flags["--port"]))
        assert f"mlflow:{flags['--port']}" in flags["--allowed-hosts"].split(",")
    assert flags["--host"] == "0.0.0.0"
    mlflow_env = services["mlflow"]["environment"]
    assert mlflow_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert set(mlflow_env) == {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION", *ALL_SECRETS}
    assert "--artifacts-destination" in flags and "--default-artifact-root" not in flags


def test_environment_names_are_settings_and_secrets_reach_only_who_uses_them(
    services: dict[str, Any],
) -> None:
    gets = {
        "mlflow": set(),
        "inference": REPLICA_SECRET_NAMES,
        "worker": {"MLOPS_SECRET_KEY"},
        "gateway": ALL_SECRETS,
    }
    for name in APP_SERVICES:
        env = services[name]["environment"]
        if name != "mlflow":
            assert set(env) <= SETTING_NAMES, name
        for secret in ALL_SECRETS:
            # Every container reads the shared .env file: blank wherever it is not used.
            if secret in gets[name]:
                assert env[secret] == f"${{{secret}:-}}" or env[secret].startswith(
                    f"${{{secret}:?"
                ), (name, secret)
            else:
                assert env[secret] == "", (name, secret)
    assert services["gateway"]["environment"]["GITHUB_WEBHOOK_SECRET"].startswith(
        "${GITHUB_WEBHOOK_SECRET:?"
    )
    # Unset, both fall back to the key file in the data directory they share (see below).
    key = {services[name]["environment"]["MLOPS_SECRET_KEY"] for name in ("gateway", "worker")}
    assert key == {"${MLOPS_SECRET_KEY:-}"}


def test_replicas_check_the_gateways_api_key(services: dict[str, Any]) -> None:
    # Native gRPC clients bypass the gateway: a replica without the key would serve them
    # unauthenticated. Both read it from .env the same way.
    gateway, inference = (services[name]["environment"] for name in ("gateway", "inference"))
    assert inference["MLOPS_API_KEY"] == gateway["MLOPS_API_KEY"] == "${MLOPS_API_KEY:-}"


def test_state_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    declared = set(compose["volumes"])
    mounts = {
        name: dict(v.split(":", 1)[::-1] for v in s.get("volumes", []))
        for name, s in services.items()
    }
    assert {v for m in mounts.values() for v in m.values()} == declared
    assert mounts["redis"] == {"/data": "redis"}
    flags = mlflow_flags(services["mlflow"]["command"])
    store = flags["--backend-store-uri"].removeprefix("sqlite:///")
    for path in (store, flags["--artifacts-destination"]):
        assert any(path.startswith(m + "/") for m in mounts["mlflow"]), path
    data_dir = services["worker"]["environment"]["MLOPS_DATA_DIR"]
    assert mounts["worker"][data_dir] == mounts["gateway"][data_dir] == "state"


def test_dockerfile_is_small_non_root_and_installs_the_lock() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    instructions = [
        line.split(None, 1)
        for line in re.sub(r"\\\n", " ", dockerfile).splitlines()
        if line and not line.startswith("#")
    ]
    assert instructions[0] == ["FROM", "python:3.11-slim"]
    assert any(
        op == "RUN" and "uv pip install" in arg and "-c requirements.lock" in arg
        for op, arg in instructions
    )
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    env = " ".join(arg for op, arg in instructions if op == "ENV")
    assert "HOME=/home/" in env
    copied = {arg.split()[0] for op, arg in instructions if op == "COPY"}
    for package in ("mlops_core", "inference", "pipeline_worker", "gateway"):
        assert package in copied
