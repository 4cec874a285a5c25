"""Running pushed code in a box: what every sandbox runner takes, returns and promises.

A box runs `python -m <module> <args>` of the platform's own Python with a read-only view of
that Python, one writable directory (the job's work directory, seen inside as `BOX_WORKDIR`)
and a private `/tmp`, under limits, with no network unless allowed, and without the
platform's data directory, secrets or processes. When `run` returns, however it ended
(success, failure, timeout, cancel, worker stop), every process of the box is gone.

Only data crosses the wall: the box's output lines and the files it leaves in its work
directory (ONNX bytes, JSON). Nothing inside is trusted, and no pickle is loaded outside.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

from mlops_core.settings import Settings
from pipeline_worker.cancellation import CancelCheck

BOX_WORKDIR = PurePosixPath("/pipeline")
"""Where the job's work directory appears inside the box."""

LineSink = Callable[[str], Awaitable[None]]
"""Receives each line the boxed process writes to stdout or stderr, in order."""


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    processes: int
    file_size_bytes: int
    tmp_bytes: int
    wall_time_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        mib = 1024 * 1024
        return cls(
            memory_bytes=settings.sandbox_memory_mb * mib,
            processes=settings.sandbox_max_processes,
            file_size_bytes=settings.sandbox_max_file_mb * mib,
            tmp_bytes=settings.sandbox_tmp_mb * mib,
            wall_time_s=settings.sandbox_wall_time_s,
        )


@dataclass(frozen=True)
class BoxJob:
    """One boxed process: `python -m module *args` with `env` as its whole environment."""

    name: str
    """Names the job in logs and runner resources, e.g. `<pipeline id>-execute`."""
    module: str
    args: tuple[str, ...]
    workdir: Path
    """Host directory mounted read-write at BOX_WORKDIR; paths in `args` use BOX_WORKDIR."""
    env: Mapping[str, str]
    limits: Limits
    network: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BoxOutcome:
    exit_code: int | None
    """The process's exit status; negative for a signal; None when it never started."""
    timed_out: bool = False
    """Killed at `limits.wall_time_s`."""
    cancelled: bool = False
    """Killed because `cancelled()` answered True."""


class SandboxUnavailable(Exception):
    """No box can be made here; the message says why and what to do."""


class Sandbox(Protocol):
    name: str

    def unavailable_reason(self) -> str | None:
        """None when boxes can be made here, else why not (checked once, then remembered)."""
        ...

    def inside(self, workdir: Path) -> PurePosixPath:
        """Where boxed code sees a job's `workdir` (BOX_WORKDIR in a real box)."""
        ...

    def give(self, workdir: Path) -> None:
        """Make files the worker laid into a job's `workdir` (after its box started) the box
        user's, as `run` does for those there before."""
        ...

    async def run(self, job: BoxJob, on_line: LineSink, cancelled: CancelCheck) -> BoxOutcome:
        """Run `job` to its end; every process it started is gone when this returns or raises
        (CancelledError included). Raises SandboxUnavailable when no box can be made."""
        ...
