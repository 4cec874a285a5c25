"""One boxed process on this machine, from start to a guaranteed end: its output lines
forwarded, its wall time and cancel requests enforced, its whole process group killed
however `run_process` is left (return, error or task cancellation)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline_worker.cancellation import CancelCheck
from pipeline_worker.sandbox import BoxOutcome, LineSink

CANCEL_POLL_S = 0.5
# A longer line is passed on in pieces of this size.
MAX_LINE_BYTES = 64 * 1024


async def run_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None,
    wall_time_s: float,
    on_line: LineSink,
    cancelled: CancelCheck,
) -> BoxOutcome:
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        limit=MAX_LINE_BYTES,
        start_new_session=True,
    )
    reader = asyncio.ensure_future(_forward(process, on_line))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wall_time_s
    timed_out = was_cancelled = False
    try:
        while process.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(process.wait()), CANCEL_POLL_S)
            if process.returncode is None:
                timed_out = loop.time() > deadline
                was_cancelled = not timed_out and await cancelled()
                if timed_out or was_cancelled:
                    break
        if process.returncode is not None:
            await reader
    finally:
        _kill_group(process)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(process.wait(), 10)
        reader.cancel()
    return BoxOutcome(process.returncode, timed_out=timed_out, cancelled=was_cancelled)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


async def _forward(process: asyncio.subprocess.Process, on_line: LineSink) -> None:
    assert process.stdout is not None
    while True:
        try:
            raw = await process.stdout.readline()
        except (ValueError, asyncio.LimitOverrunError):
            # NOTE: a line past MAX_LINE_BYTES: pass on what is buffered and go on.
            raw = await process.stdout.read(MAX_LINE_BYTES)
        if not raw:
            return
        await on_line(raw.decode("utf-8", "replace").rstrip("\r\n"))
