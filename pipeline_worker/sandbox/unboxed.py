"""No box (`MLOPS_SANDBOX=off`, development only): boxed entry points run as the worker's own
user in their own session, with the built environment but the worker's whole view of the
machine. The session is killed when the job ends; a process that left it survives."""

from __future__ import annotations

import sys
from pathlib import Path, PurePosixPath

from pipeline_worker.cancellation import CancelCheck
from pipeline_worker.sandbox import BoxJob, BoxOutcome, LineSink
from pipeline_worker.sandbox.process import run_process


class Unboxed:
    name = "unsandboxed"

    def unavailable_reason(self) -> str | None:
        return None

    def inside(self, workdir: Path) -> PurePosixPath:
        return PurePosixPath(workdir)

    def give(self, workdir: Path) -> None:
        """Boxed code runs as the worker's own user: its files are already its own."""

    async def run(self, job: BoxJob, on_line: LineSink, cancelled: CancelCheck) -> BoxOutcome:
        return await run_process(
            [str(Path(sys.prefix) / "bin" / "python"), "-m", job.module, *job.args],
            env=job.env,
            cwd=job.workdir,
            wall_time_s=job.limits.wall_time_s,
            on_line=on_line,
            cancelled=cancelled,
        )
