"""Start inference replicas as separate processes for a benchmark, and stop them by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    grpc_port: int
    http_ports: list[int]
    pids: list[int]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def stop(self) -> None:
        for pid in self.pids:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 15
        for pid in self.pids:
            while time.monotonic() < deadline:
                try:
                    os.killpg(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def start_replicas(
    repository: Path,
    replicas: int = 1,
    extra_args: list[str] | None = None,
    log_dir: Path | None = None,
) -> ServerProcess:
    """`replicas` processes sharing one gRPC port (SO_REUSEPORT), each with its own HTTP port."""
    grpc_port = free_port()
    http_ports = [free_port() for _ in range(replicas)]
    procs = []
    for i, http_port in enumerate(http_ports):
        log = open(log_dir / f"replica-{i}.log", "ab") if log_dir else subprocess.DEVNULL  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "inference",
                    "--model-repository",
                    str(repository),
                    "--grpc-port",
                    str(grpc_port),
                    "--http-port",
                    str(http_port),
                    "--replica-id",
                    f"bench-{i}",
                    *(extra_args or []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "REDIS_URL": ""},
            )
        )
    server = ServerProcess(procs[0], grpc_port, http_ports, [p.pid for p in procs])
    deadline = time.monotonic() + 60
    for port in http_ports:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                server.stop()
                raise TimeoutError("inference replicas did not become ready")
            time.sleep(0.1)
    return server
