"""The platform as `make run` starts it (`python -m launcher`), private to one test: its
own data directory and free ports, started and stopped as a user would, timed."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from benchmarks.processes import REPO_ROOT, ManagedProcess, port_open
from tests.deploy.platform import READY_LINE, platform_env
from tests.deploy.proctree import descendants, survivors

WEBHOOK_SECRET = "end-to-end-webhook-secret"
READY_TIMEOUT_S = 170
"""Generous: a cold start takes 25-50 s on a busy 2-core machine, MLflow being most of it."""
STOP_TIMEOUT_S = 60
"""The runner gives each service 20 s between SIGTERM and SIGKILL."""


def stack_env(data_dir: Path, replicas: int = 2) -> dict[str, str]:
    """Every port moved to a free one, local repositories allowed, a known webhook secret."""
    return {
        **platform_env(data_dir, replicas=replicas),
        "MLOPS_READY_TIMEOUT_S": str(READY_TIMEOUT_S - 10),
        "MLOPS_ALLOW_LOCAL_REPOS": "true",
        "GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }


def inherited_env() -> dict[str, str]:
    """This process's environment without the platform's settings, so a developer's exported
    REDIS_URL, DATABASE_URL or MLOPS_* cannot reach the stack under test."""
    ours = ("REDIS_URL", "DATABASE_URL", "MLFLOW_TRACKING_URI", "GITHUB_WEBHOOK_SECRET")
    return {k: v for k, v in os.environ.items() if k not in ours and not k.startswith("MLOPS_")}


class Stack:
    """One `python -m launcher`, run from a scratch folder (no `.env` of the checkout)."""

    def __init__(self, name: str, workdir: Path, env: dict[str, str]) -> None:
        self.env = env
        self.process = ManagedProcess(
            name, [sys.executable, "-m", "launcher"], workdir, cwd=workdir
        )
        self.process.env = {
            **inherited_env(),
            **env,
            "PATH": self.process.env["PATH"],
            "PYTHONPATH": str(REPO_ROOT),
        }
        self.started_at = 0.0
        self.tree: dict[int, int] = {}

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.env['MLOPS_GATEWAY_PORT']}"

    @property
    def grpc_address(self) -> str:
        """The fleet's one public gRPC address, shared by every replica."""
        return f"127.0.0.1:{self.env['MLOPS_GRPC_PORT']}"

    def ports(self) -> list[int]:
        replicas = int(self.env["MLOPS_REPLICAS"])
        keys = ("MLOPS_GATEWAY_PORT", "MLOPS_GRPC_PORT", "MLOPS_REDIS_PORT", "MLOPS_MLFLOW_PORT")
        per_replica = ("MLOPS_HTTP_PORT", "MLOPS_PRIVATE_GRPC_PORT_BASE")
        return [int(self.env[k]) for k in keys] + [
            int(self.env[k]) + i for k in per_replica for i in range(replicas)
        ]

    def output(self) -> str:
        return self.process.log_path.read_text(errors="replace")

    def start(self) -> float:
        """Start, wait for the runner's "platform ready" (every service, the gateway's
        `/ready` last), check `/ready` ourselves; seconds from launch to ready."""
        self.started_at = time.monotonic()
        # NOTE: a restarted stack appends to its log: only this start's ready line counts.
        before = len(self.output()) if self.process.log_path.exists() else 0
        self.process.start()
        self.process.wait_until(
            lambda: READY_LINE in self.output()[before:], READY_TIMEOUT_S, READY_LINE
        )
        took = time.monotonic() - self.started_at
        ready = httpx.get(f"{self.gateway}/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        self.tree = descendants(self.process.pid)
        return took

    def stop(self) -> float:
        """SIGTERM to the runner's process group, as a terminal's Ctrl-C or `kill` of a
        foreground job would; asserts a clean exit and that no process or port is left."""
        self.tree = descendants(self.process.pid) or self.tree
        before = len(self.output())
        began = time.monotonic()
        self.process.signal(signal.SIGTERM)
        assert self.process.proc is not None
        code = self.process.proc.wait(timeout=STOP_TIMEOUT_S)
        took = time.monotonic() - began
        tail = self.output()[-3000:]
        assert code == 0, f"exit code {code}:\n{tail}"
        assert self.tree, "the runner had started no process"
        assert survivors(self.tree) == [], f"left running:\n{tail}"
        assert [p for p in self.ports() if port_open(p)] == [], tail
        # NOTE: only what this stop printed: a fault test SIGKILLs services before it.
        stopping = self.output()[before:]
        assert "SIGKILL" not in stopping, f"every service should stop on SIGTERM:\n{tail}"
        return took

    def cleanup(self) -> None:
        """After a failure: stop the runner and end whatever it started, by PID."""
        if self.process.alive():
            self.tree = descendants(self.process.pid) or self.tree
            self.process.stop(timeout_s=STOP_TIMEOUT_S)
        for pid in survivors(self.tree):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def started_stack(
    name: str, workdir: Path, env: dict[str, str], *, stop_cleanly: bool = False
) -> Iterator[Stack]:
    """A started stack for a module's tests; `stop_cleanly` also asserts a clean SIGTERM stop
    once they pass. Whatever is left is ended by PID either way."""
    stack = Stack(name, workdir, env)
    try:
        stack.start()
        yield stack
        if stop_cleanly:
            stack.stop()
    finally:
        stack.cleanup()
