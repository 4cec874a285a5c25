"""The process list `make run` starts, computed from settings; the readiness wait wrapper."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from supervisor.datatypes import RestartUnconditionally
from supervisor.options import ServerOptions, UnhosedConfigParser

from benchmarks.processes import REPO_ROOT, free_port
from launcher.readiness import HttpReady, RedisReady, redact
from launcher.services import (
    Service,
    plan,
    prepare_data_dir,
    redis_password,
    webhook_secret,
    without_secrets,
)
from launcher.supervisord_conf import (
    START_RETRIES,
    START_SECS,
    STOP_WAIT_S,
    CannotSupervise,
    SupervisorFiles,
    render,
)
from mlops_core.settings import Settings


def settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"data_dir": tmp_path, "redis_url": None}
    values.update(overrides)
    return Settings(_env_file=None, **values)


def by_name(services: list[Service]) -> dict[str, Service]:
    return {s.name: s for s in services}


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


PASSWORD = "generated-redis-password"
REDIS_URL = f"redis://:{PASSWORD}@127.0.0.1:6379/0"


def test_defaults_start_every_service_on_the_documented_ports(tmp_path: Path) -> None:
    stack = plan(settings(tmp_path), python="py", redis_password=PASSWORD)
    names = [s.name for s in stack.services]
    assert names == ["redis", "mlflow", "inference.0", "inference.1", "worker", "gateway"]
    svc = by_name(stack.services)

    redis = svc["redis"].argv
    assert redis[1] == str(tmp_path / "redis.conf")  # where its requirepass is
    assert flag(redis, "--port") == "6379"
    assert flag(redis, "--bind") == "127.0.0.1"
    assert flag(redis, "--dir") == str(tmp_path / "redis")
    assert flag(redis, "--appendonly") == "yes"
    assert stack.redis_url == REDIS_URL
    assert svc["redis"].ready == RedisReady(REDIS_URL)

    mlflow = svc["mlflow"].argv
    assert mlflow[:4] == ["py", "-m", "mlflow", "server"]
    assert flag(mlflow, "--host") == "127.0.0.1"
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
        assert replica.env["REDIS_URL"] == stack.redis_url
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
        assert svc[name].env["REDIS_URL"] == REDIS_URL
        assert svc[name].needs == (
            RedisReady(REDIS_URL),
            HttpReady("http://127.0.0.1:5000/health"),
        )
    for service in stack.services:
        assert PASSWORD not in " ".join(service.command(60, python="py")), service.name


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


def test_secrets_reach_only_the_services_that_use_them(tmp_path: Path) -> None:
    stack = plan(settings(tmp_path))
    secret_values = {"GITHUB_WEBHOOK_SECRET": "s", "MLOPS_API_KEY": "k", "MLOPS_SECRET_KEY": "t"}
    parent = {"PATH": "/usr/bin", "X": "1", **secret_values}
    users = {
        "GITHUB_WEBHOOK_SECRET": {"gateway"},
        "MLOPS_API_KEY": {"gateway", "inference.0", "inference.1"},
        "MLOPS_SECRET_KEY": {"gateway", "worker"},  # the one seals tokens, the other opens them
    }
    for service in stack.services:
        env = service.environment(parent, secret_values, "/venv/bin/python")
        assert env["X"] == "1"
        assert env["PATH"] == "/venv/bin:/usr/bin"
        for name, services in users.items():
            assert (name in env) == (service.name in services), (name, service.name)


def test_commands_wait_for_redis_and_mlflow_first(tmp_path: Path) -> None:
    stack = plan(settings(tmp_path), python="/v/python", redis_password=PASSWORD)
    svc = by_name(stack.services)
    assert svc["redis"].command(60, python="/v/python") == svc["redis"].argv
    gateway = svc["gateway"].command(60, python="/v/python")
    assert gateway[:5] == ["/v/python", "-m", "launcher.wait", "--timeout", "60"]
    # The URL holds the password: the wrapper takes it from the environment, not argv.
    assert flag(gateway, "--redis-env") == "REDIS_URL"
    assert "--redis" not in gateway
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


def test_a_gateway_started_without_a_worker_is_waited_for_until_it_answers(
    tmp_path: Path,
) -> None:
    # Its /ready fails without a live worker: `--only` without one must still become ready.
    stack = plan(settings(tmp_path))
    alone = {s.name: s.ready for s in stack.select(["redis", "gateway"])}
    assert alone["gateway"] == HttpReady(f"{stack.gateway_url}/health")
    full = {s.name: s.ready for s in stack.select(["gateway", "worker"])}
    assert full["gateway"] == HttpReady(f"{stack.gateway_url}/ready")


def test_the_embedded_redis_gets_a_private_kept_password(tmp_path: Path) -> None:
    password = redis_password(settings(tmp_path))
    assert len(password) == 64
    assert redis_password(settings(tmp_path)) == password
    stack = plan(settings(tmp_path), redis_password=password)
    assert stack.redis_password_file == tmp_path / "redis_password"
    prepare_data_dir(settings(tmp_path), password)
    config = tmp_path / "redis.conf"
    assert config.read_text() == f"requirepass {password}\n"
    for path in (stack.redis_password_file, config):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert redact(stack.redis_url) == "redis://***@127.0.0.1:6379/0"
    assert password not in RedisReady(stack.redis_url).describe()

    external = settings(tmp_path / "ext", redis_url="redis://:pw@redis.internal:6380/2")
    assert redis_password(external) == ""
    assert plan(external, redis_password="").redis_password_file is None
    assert not (tmp_path / "ext").exists()


def test_the_wait_wrapper_reads_the_redis_url_from_the_environment(redis_url: str) -> None:
    done = wait_wrapper("--redis-env", "MLOPS_TEST_REDIS", "--", "true")
    assert done.returncode != 0 and "MLOPS_TEST_REDIS not set" in done.stderr
    done = wait_wrapper(
        "--redis-env", "MLOPS_TEST_REDIS", "--", sys.executable, "-c", "print('started')",
        env={"MLOPS_TEST_REDIS": redis_url},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "started"


def test_the_token_key_is_kept_in_the_data_directory_unless_given(tmp_path: Path) -> None:
    assert plan(settings(tmp_path)).key_file == tmp_path / "secret.key"
    assert plan(settings(tmp_path, secret_key="k")).key_file is None


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


def wait_wrapper(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher.wait", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=30,
        env={**os.environ, **(env or {})},
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


def test_supervisord_stops_the_gateway_and_worker_first_and_redis_last(tmp_path: Path) -> None:
    stack = plan(settings(tmp_path, replicas=2))
    priority = {s.name: s.priority for s in stack.services}
    # supervisord starts the lowest first and stops the highest first.
    assert priority["redis"] < priority["mlflow"] < priority["inference.0"] < priority["worker"]
    assert priority["inference.0"] == priority["inference.1"]
    assert priority["worker"] < priority["gateway"]
    assert {s.group for s in stack.services} == {
        "redis",
        "mlflow",
        "inference",
        "worker",
        "gateway",
    }


SECRETS = {
    "GITHUB_WEBHOOK_SECRET": "hook-s3cret",
    "MLOPS_API_KEY": "api-k3y",
    "MLOPS_SECRET_KEY": "t0k",
}


def conf_for(tmp_path: Path, secret_values: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """The supervisord.conf `make run` writes for the default plan, and what supervisord reads
    back from it: {program name: its process config}."""
    stack = plan(settings(tmp_path), python="/v/python", redis_password=PASSWORD)
    parent = {"PATH": "/usr/bin", "HOME": "/home/you", **secret_values}
    programs = [s.program(60, parent, secret_values, "/v/python") for s in stack.services]
    files = SupervisorFiles(tmp_path)
    files.prepare()  # supervisord checks that the log folder exists
    text = render(programs, without_secrets(parent), files, "pw", tmp_path)
    options = ServerOptions()
    parser = UnhosedConfigParser()
    parser.expansions = options.environ_expansions
    parser.read_string(text)
    groups = options.process_groups_from_parser(parser)
    return text, {c.name: c for g in groups for c in g.process_configs}


def sections(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for block in text.split("\n["):
        name, _, body = block.partition("]\n")
        found[name.lstrip("[")] = body
    return found


def test_each_supervisord_program_gets_its_own_environment(tmp_path: Path) -> None:
    text, parsed = conf_for(tmp_path, SECRETS)
    stack = plan(settings(tmp_path), python="/v/python", redis_password=PASSWORD)
    parent = {"PATH": "/usr/bin", "HOME": "/home/you", **SECRETS}
    for service in stack.services:
        config = parsed[service.name]
        # What the program sees: supervisord's environment (the parent's, no secrets) plus
        # its section's.
        seen = {**without_secrets(parent), **config.environment}
        assert seen == service.environment(parent, SECRETS, "/v/python"), service.name
        assert config.command.split()[0] == "/v/python" or service.name == "redis"
        assert config.priority == service.priority
        assert config.autorestart is RestartUnconditionally
        assert (config.startsecs, config.startretries) == (START_SECS, START_RETRIES)
        assert (config.stopasgroup, config.killasgroup) == (True, True)
        assert config.stopwaitsecs == STOP_WAIT_S
        assert config.redirect_stderr
        assert config.stdout_logfile == str(tmp_path / "logs" / f"{service.name}.log")
    # A secret is written only in the sections of the programs that get it; the Redis password
    # only where REDIS_URL is.
    users = {
        "hook-s3cret": {"program:gateway"},
        "api-k3y": {"program:gateway", "program:inference.0", "program:inference.1"},
        "t0k": {"program:gateway", "program:worker"},
        PASSWORD: {f"program:{s.name}" for s in stack.services if "REDIS_URL" in s.env},
    }
    for value, holders in users.items():
        assert {name for name, body in sections(text).items() if value in body} == holders
    assert "program:redis" not in users[PASSWORD]
    group = sections(text)["group:inference"]
    assert "programs=inference.0,inference.1\n" in group and "priority=30" in group
    assert f"serverurl=unix://{tmp_path}/supervisor/supervisord.sock" in text
    assert "chmod=0600" in sections(text)["unix_http_server"]


def test_values_supervisord_would_alter_are_escaped_or_refused_unprinted(tmp_path: Path) -> None:
    # '%' would be expanded, a quote inside a value is kept by switching the quotes.
    odd = {**SECRETS, "GITHUB_WEBHOOK_SECRET": "50%(x)s 'q' %%"}
    _, parsed = conf_for(tmp_path, odd)
    assert parsed["gateway"].environment["GITHUB_WEBHOOK_SECRET"] == odd["GITHUB_WEBHOOK_SECRET"]
    for bad in ("both \"quotes\" and 'quotes'", "a #comment", "line\nbreak", '"edge quotes"'):
        with pytest.raises(CannotSupervise) as caught:
            conf_for(tmp_path, {**SECRETS, "MLOPS_API_KEY": bad})
        assert bad not in str(caught.value) and "hook-s3cret" not in str(caught.value)
        if "\n" not in bad:
            assert "MLOPS_API_KEY" in str(caught.value) or "inference.0" in str(caught.value)


def test_supervisord_files_are_private(tmp_path: Path) -> None:
    files = SupervisorFiles(tmp_path / "data")
    files.prepare()
    files.write("[supervisord]\n")
    assert files.conf == tmp_path / "data" / "supervisord.conf"
    assert files.conf.stat().st_mode & 0o777 == 0o600
    for folder in (files.control_dir, files.logs):
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    assert files.supervisorctl("/v/bin/python") == f"/v/bin/supervisorctl -c {files.conf}"
    too_long = SupervisorFiles(tmp_path / ("d" * 120))
    with pytest.raises(CannotSupervise, match="MLOPS_DATA_DIR"):
        too_long.prepare()
