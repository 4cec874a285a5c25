"""Pinning a replica to CPUs (MLOPS_CPUS), before it starts any thread."""

from __future__ import annotations

import os


def parse_cpu_list(spec: str) -> set[int]:
    """CPU ids from a list as `taskset -c` takes it: "0", "0-3", "1,3", "0-1,4"."""
    cpus: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"MLOPS_CPUS={spec!r}: {part!r} is not a CPU id or range like 0-3")
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise ValueError(f"MLOPS_CPUS={spec!r}: range {part!r} runs backwards")
        cpus.update(range(low, high + 1))
    if not cpus:
        raise ValueError(f"MLOPS_CPUS={spec!r} names no CPU")
    return cpus


def pin_process(spec: str) -> set[int] | None:
    """Restrict this process to the CPUs in `spec` (empty: leave it as it is): every thread it
    has (imports start some, e.g. OpenBLAS's pool), and so every thread they start later.
    Returns the set now in force."""
    if not spec.strip():
        return None
    wanted = parse_cpu_list(spec)
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError(f"MLOPS_CPUS={spec!r}: pinning to CPUs needs Linux")
    allowed = os.sched_getaffinity(0)
    cpus = wanted & allowed
    if not cpus:
        raise ValueError(
            f"MLOPS_CPUS={spec!r}: none of those CPUs is available; this process may use "
            f"{sorted(allowed)}"
        )
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
    return os.sched_getaffinity(0)


def replica_cpu(index: int) -> str | None:
    """The CPU for replica `index` when several are started together (`make run`, the
    benchmark): the index-th CPU this process may use, round robin. None where pinning is
    not available (only Linux has sched_setaffinity): those replicas run where the OS puts them."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return str(cpus[index % len(cpus)])
