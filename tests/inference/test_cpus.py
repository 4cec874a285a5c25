"""Pinning a replica to CPUs: the list syntax, and a real replica whose every thread obeys."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from inference.cpus import parse_cpu_list, replica_cpu


@pytest.mark.parametrize(
    ("spec", "cpus"),
    [("0", {0}), ("0-3", {0, 1, 2, 3}), ("1,3", {1, 3}), (" 0-1, 4 ", {0, 1, 4})],
)
def test_cpu_lists_as_taskset_writes_them(spec: str, cpus: set[int]) -> None:
    assert parse_cpu_list(spec) == cpus


@pytest.mark.parametrize(
    ("spec", "message"),
    [("a", "not a CPU id"), ("3-1", "runs backwards"), (",", "names no CPU"), ("1-", "not a CPU")],
)
def test_bad_cpu_lists_are_named(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_cpu_list(spec)


def _allowed_cpus(pid: int) -> dict[str, str]:
    """Each thread's name and its Cpus_allowed_list."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        lines = (task / "status").read_text().splitlines()
        status = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
        threads[f"{status['Name']}/{task.name}"] = status["Cpus_allowed_list"].strip()
    return threads


def test_a_pinned_replica_runs_every_thread_on_its_cpu(start_inference, iris_repo: Path) -> None:
    cpu = str(max(os.sched_getaffinity(0)))
    server = start_inference(iris_repo, name="pinned", extra_args=["--cpus", cpu])
    threads = _allowed_cpus(server.process.pid)
    assert len(threads) > 3  # gRPC, onnxruntime and Python threads, all started after pinning
    assert set(threads.values()) == {cpu}, threads


def test_an_unusable_cpu_list_stops_the_replica_with_the_reason(
    start_inference, iris_repo: Path
) -> None:
    server = start_inference(iris_repo, name="badcpus", extra_args=["--cpus", "4096"], wait=False)
    deadline = time.monotonic() + 30
    while server.process.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not server.process.alive()
    assert "none of those CPUs is available" in server.process.log_tail()


def test_replicas_started_together_take_the_cpus_in_turn() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    assert [replica_cpu(i) for i in range(2 * len(cpus))] == [str(c) for c in cpus * 2]
