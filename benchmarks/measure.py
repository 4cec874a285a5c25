"""What every cell records, whatever the client: throughput, latency percentiles and the CPU
used by the client and by each role of server processes."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Measurement:
    client: str
    """`h2load`, `wrk` or `python` (grpc.aio)."""
    requests: int
    """Completed requests in the measured window (errors included)."""
    errors: int
    elapsed_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    client_cpu_s: float
    notes: list[str] = field(default_factory=list)


def percentiles_ms(latencies_ms: np.ndarray) -> tuple[float, float, float]:
    if latencies_ms.size == 0:
        return (float("nan"),) * 3
    p50, p90, p99 = np.percentile(latencies_ms, [50, 90, 99])
    return float(p50), float(p90), float(p99)


def self_cpu_s() -> float:
    """CPU seconds used so far by this process (a Python client's own share)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_s() -> float:
    """CPU of every reaped child so far: a native client's share is the change across its run
    (the servers, still running, are not reaped during a cell)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu_s(pid: int) -> float:
    """CPU seconds used so far by a live process (0 once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def descendants(pids: list[int]) -> list[int]:
    """The processes and all their descendants (MLServer, say, may fork workers)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found = list(pids)
    frontier = set(pids)
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier}
        found.extend(sorted(frontier))
    return found


class CpuMeter:
    """CPU seconds per role of server processes between `__init__` and `stop()`."""

    def __init__(self, pids_by_role: dict[str, list[int]]) -> None:
        self._trees = {role: descendants(pids) for role, pids in pids_by_role.items()}
        self._start = {pid: process_cpu_s(pid) for pids in self._trees.values() for pid in pids}

    def stop(self) -> dict[str, float]:
        return {
            role: round(sum(process_cpu_s(pid) - self._start[pid] for pid in pids), 3)
            for role, pids in self._trees.items()
        }
