"""Start `python -m launcher` as a user would, on free ports, and stop it by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from benchmarks.processes import REPO_ROOT, VENV_BIN, ManagedProcess, free_port
from tests.deploy.proctree import descendants

READY_LINE = "platform ready in"


def free_port_pair() -> int:
    """A free port whose successor is free too (replicas take consecutive ports)."""
    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port


def platform_env(data_dir: Path, replicas: int = 2) -> dict[str, str]:
    """Settings for a private platform: its own data directory and every port moved."""
    env = {
        "MLOPS_DATA_DIR": str(data_dir),
        "MLOPS_REPLICAS": str(replicas),
        "MLOPS_REDIS_PORT": str(free_port()),
        "MLOPS_MLFLOW_PORT": str(free_port()),
        "MLOPS_GATEWAY_PORT": str(free_port()),
        "MLOPS_GRPC_PORT": str(free_port()),
        "MLOPS_HTTP_PORT": str(free_port_pair()),
        "MLOPS_PRIVATE_GRPC_PORT_BASE": str(free_port_pair()),
        "MLOPS_READY_TIMEOUT_S": "120",
        "PYTHONPATH": str(REPO_ROOT),
    }
    return env


class Platform:
    """One `python -m launcher` process; its cwd is a scratch folder so no `.env` from
    the checkout leaks in."""

    def __init__(
        self, name: str, workdir: Path, env: dict[str, str], only: list[str] | None = None
    ) -> None:
        base = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        argv = [sys.executable, "-m", "launcher", *(["--only", *only] if only else [])]
        self.workdir = workdir
        self.process = ManagedProcess(name, argv, workdir, env=env, cwd=workdir)
        self.process.env = {**base, **env, "PATH": self.process.env["PATH"]}
        self.env = env

    def start(self) -> Platform:
        self.process.start()
        return self

    def output(self) -> str:
        return self.process.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 150) -> None:
        self.process.wait_until(lambda: READY_LINE in self.output(), timeout_s, READY_LINE)

    def tree(self) -> dict[int, int]:
        return descendants(self.process.pid)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        """Send `sig` to the runner alone (as `kill` or a container stop would); its exit code."""
        assert self.process.proc is not None
        self.process.proc.send_signal(sig)
        return self.process.proc.wait(timeout=timeout_s)

    def port(self, name: str) -> int:
        return int(self.env[name])

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The command the README documents, against this platform's supervisord."""
        conf = Path(self.env["MLOPS_DATA_DIR"]) / "supervisord.conf"
        return subprocess.run(
            [str(VENV_BIN / "supervisorctl"), "-c", str(conf), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
