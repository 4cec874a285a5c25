"""What a box costs to start: the platform's Python started plainly and in the local sandbox,
alternately, in one run (ratios, not absolute figures, survive a shared machine).

`python -m benchmarks.sandbox_start [-n 20]` prints the medians and the box's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pipeline_worker.sandbox import BoxJob, Limits
from pipeline_worker.sandbox.local import LocalSandbox
from pipeline_worker.sandbox.unboxed import Unboxed

MODULE = "pipeline_worker.boxed.model"
LIMITS = Limits(4 << 30, 1024, 1 << 30, 64 << 20, 60)


async def never() -> bool:
    return False


async def timed(sandbox: LocalSandbox | Unboxed, workdir: Path) -> float:
    lines: list[str] = []

    async def keep(line: str) -> None:
        lines.append(line)

    job = BoxJob("bench", MODULE, (), workdir, {"PATH": "/usr/bin:/bin"}, LIMITS)
    began = time.perf_counter()
    outcome = await sandbox.run(job, keep, never)
    took = time.perf_counter() - began
    if outcome.exit_code != 0:
        raise SystemExit(f"{sandbox.name} run failed: {outcome} {lines[-5:]}")
    return took


async def main(rounds: int) -> None:
    boxed, plain = LocalSandbox(), Unboxed()
    problem = boxed.unavailable_reason()
    if problem:
        raise SystemExit(f"no sandbox here: {problem}")
    times: dict[str, list[float]] = {"plain": [], "boxed": []}
    with tempfile.TemporaryDirectory() as work:
        for _ in range(rounds):
            times["plain"].append(await timed(plain, Path(work)))
            times["boxed"].append(await timed(boxed, Path(work)))
    medians = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(f"python -m {MODULE}, {rounds} alternating runs each (median ms):")
    print(f"  plain process : {medians['plain']:7.1f}")
    print(f"  local sandbox : {medians['boxed']:7.1f}")
    print(f"  the box itself: {medians['boxed'] - medians['plain']:7.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--rounds", type=int, default=20)
    asyncio.run(main(parser.parse_args(sys.argv[1:]).rounds))
