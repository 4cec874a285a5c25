"""Where a server spends its time under load: `py-spy record --native` on one replica during
an extra cell (never a measured one: each sample pauses the process, so the profiled cell
runs slower), summed into top frames."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

PY_SPY = Path(sys.executable).parent / "py-spy"
WAITS = (
    "epoll_wait",
    "epoll_pwait",
    "_queue_SimpleQueue_get",
    "pthread_cond_wait",
    "pthread_cond_timedwait",
    "sem_timedwait",
    "sem_clockwait",
    "acquire_timed",
    "select (",
    "poll (",
)
"""Frames of a thread waiting for work: py-spy --native cannot tell those threads idle."""
OWN_CODE = ("(inference/", "(gateway/", "(mlops_core/")


def top_frames(collapsed: str, top: int = 15) -> dict[str, Any]:
    """From py-spy's raw (collapsed) stacks of busy threads (waiting ones left out): the share
    of samples per thread, per leaf frame (where the CPU was) and per function of our own
    anywhere on the stack (what it was doing)."""
    threads: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = waiting = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        if any(wait in stack for wait in WAITS):
            waiting += count
            continue
        frames = stack.split(";")
        total += count
        if frames[0].startswith(("thread ", "process ")):
            # "thread (1234): ort_0" -> "ort_0": names group the same pool across runs.
            threads[frames[0].split(": ", 1)[-1]] += count
            frames = frames[1:]
        if not frames:
            continue
        leaves[frames[-1]] += count
        for frame in set(frames):
            if any(marker in frame for marker in OWN_CODE):
                inclusive[frame] += count

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(frame, round(100 * n / total, 1)) for frame, n in counter.most_common(top)]

    return {
        "samples": total,
        "waiting_samples": waiting,
        "threads": shares(threads),
        "self": shares(leaves),
        "own_code": shares(inclusive),
    }


def profile_during(pid: int, seconds: float, out: Path, load: Callable[[], Any]) -> dict:
    """Record `pid` for `seconds` while `load()` runs; returns the summary (also kept in `out`)."""
    argv = [str(PY_SPY), "record", "--native", "--threads", "--nolineno", "-r", "50"]
    argv += ["-d", f"{max(1, round(seconds))}", "-f", "raw", "-o", str(out), "-p", str(pid)]
    recorder = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        load()
    finally:
        _, err = recorder.communicate(timeout=seconds + 60)
    if recorder.returncode != 0 or not out.exists():
        return {"error": f"py-spy failed ({recorder.returncode}): {err.decode()[-500:]}"}
    return top_frames(out.read_text())
