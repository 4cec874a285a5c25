"""What a rollout's route costs one replica: single-row iris LR at 64 calls in flight (h2load),
with no route, a canary (weight 0.5) and shadows (mirror rate 0.1 and 1.0), in alternating
rounds; optionally against another checkout's replica with no route (`--baseline-tree`).

    .venv/bin/python -m benchmarks.routes -d 5 --rounds 3 --baseline-tree /tmp/base

The replica runs in fleet mode pinned to one CPU, as `ours-1r` in the main run; the candidate
is a copy of the active version, so both answer the same bytes (h2load checks their size).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from benchmarks import iris_models
from benchmarks.cells import validate_grpc
from benchmarks.h2load import run_h2load
from benchmarks.measure import process_cpu_s
from benchmarks.servers import REPO_ROOT, Proc, free_port, http_ok, start_redis
from inference.cpus import replica_cpu
from mlops_core import fleet_state
from mlops_core.fleet_state import CandidateRoute, DesiredModel, VersionStats
from mlops_core.oip import infer_request


@dataclass(frozen=True)
class Setup:
    key: str
    label: str
    tree: Path
    candidate: CandidateRoute | None = None


def setups(baseline_tree: Path | None) -> list[Setup]:
    baseline = (
        [Setup("baseline", "baseline tree, no route", baseline_tree)] if baseline_tree else []
    )
    return [
        *baseline,
        Setup("none", "no route", REPO_ROOT),
        Setup("canary", "canary, weight 0.5", REPO_ROOT, CandidateRoute(version="2", weight=0.5)),
        Setup(
            "shadow-0.1",
            "shadow, mirror 0.1",
            REPO_ROOT,
            CandidateRoute(version="2", mirror_rate=0.1),
        ),
        Setup(
            "shadow-1",
            "shadow, mirror 1.0",
            REPO_ROOT,
            CandidateRoute(version="2", mirror_rate=1.0),
        ),
    ]


def write_repository(root: Path) -> None:
    iris_models.write_version(root, "iris", "1", iris_models.train("lr"))
    shutil.copytree(root / "iris" / "1", root / "iris" / "2")


async def desire(redis_url: str, candidate: CandidateRoute | None) -> None:
    redis = Redis.from_url(redis_url)
    try:
        await fleet_state.set_desired(redis, "iris", DesiredModel(active="1", candidate=candidate))
    finally:
        await redis.aclose()


async def candidate_stats(
    redis_url: str, replica_id: str, setup: Setup, timeout_s: float = 20
) -> VersionStats:
    """The candidate's counters once the replica reports the route applied (the baseline
    tree reports none: its heartbeat is all it waits for)."""
    redis = Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            for report in await fleet_state.live_replicas(redis):
                if report.replica_id != replica_id:
                    continue
                served = report.models.get("iris")
                if served is not None and (
                    setup.tree != REPO_ROOT or served.candidate == setup.candidate
                ):
                    return served.stats.get("2") or VersionStats()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{setup.label}: route not applied")
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()


def requests_served(http_port: int) -> float:
    """The replica's `mlops_inference_requests_total`, summed over versions."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("mlops_inference_requests_total{")
    )


def measure(
    setup: Setup, repository: Path, redis_url: str, log_dir: Path, args: argparse.Namespace
) -> dict:
    asyncio.run(desire(redis_url, setup.candidate))
    grpc_port, http_port = free_port(), free_port()
    replica_id = f"routes-{grpc_port}"
    pinned = replica_cpu(0)
    replica = Proc(
        "replica",
        [
            sys.executable,
            "-m",
            "inference",
            *("--model-repository", str(repository)),
            *("--grpc-port", str(grpc_port), "--http-port", str(http_port)),
            *("--redis-url", redis_url, "--replica-id", replica_id),
            *(["--cpus", pinned] if pinned is not None else []),
        ],
        log_dir,
        env={"MLOPS_LOG_LEVEL": "WARNING"},
        # NOTE: `python -m` puts the working directory first on sys.path: the tree measured.
        cwd=setup.tree,
    )
    try:
        replica.wait_until(lambda: http_ok(f"http://127.0.0.1:{http_port}/ready"), 90)
        before = asyncio.run(candidate_stats(redis_url, replica_id, setup))
        target = f"127.0.0.1:{grpc_port}"
        request = infer_request("iris", {"input": iris_models.iris()[0][:1]})
        checked = validate_grpc(target, request, 1)
        cpu_before, served_before = process_cpu_s(replica.pid), requests_served(http_port)
        measured = run_h2load(
            "h2load",
            target,
            request.SerializeToString(),
            64,
            args.duration,
            args.warmup,
            checked["response_bytes"] + 5,
        )
        cpu = process_cpu_s(replica.pid) - cpu_before
        served = requests_served(http_port) - served_before
        time.sleep(1.5)  # a heartbeat after the last call
        after = asyncio.run(candidate_stats(redis_url, replica_id, setup))
    finally:
        replica.stop()
    return {
        "rps": measured.rps,
        "p50_ms": measured.p50_ms,
        "p99_ms": measured.p99_ms,
        "errors": measured.errors,
        "cpu_us_per_request": cpu / served * 1e6 if served else float("nan"),
        "candidate_answered": after.requests - before.requests,
        "mirrored": after.mirrored - before.mirrored,
        "dropped": after.mirror_dropped - before.mirror_dropped,
        "agreed": after.agreed - before.agreed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-tree", type=Path, help="another checkout, run with no route")
    parser.add_argument(
        "--setups",
        nargs="+",
        choices=["baseline", "none", "canary", "shadow-0.1", "shadow-1"],
        help="only these (default: all)",
    )
    args = parser.parse_args()
    runs = [s for s in setups(args.baseline_tree) if not args.setups or s.key in args.setups]
    results: dict[str, list[dict]] = {s.label: [] for s in runs}
    with tempfile.TemporaryDirectory(prefix="bench-routes-") as tmp:
        root = Path(tmp)
        write_repository(root / "models")
        redis, redis_url = start_redis(root / "logs")
        try:
            for round_ in range(args.rounds):
                # NOTE: each round in another order, so that a drift of the machine's speed
                # does not always favour the same setup.
                for setup in runs[round_ % len(runs) :] + runs[: round_ % len(runs)]:
                    result = measure(setup, root / "models", redis_url, root / "logs", args)
                    results[setup.label].append(result)
                    print(f"round {round_ + 1} {setup.label}: {result}", flush=True)
        finally:
            redis.stop()
    print(
        "\n| setup | req/s per round | mean | p50 ms | p99 ms | replica CPU us/request "
        "| mirrored / dropped |"
    )
    print("|---|---|---:|---:|---:|---|---|")
    for label, rows in results.items():
        rates = " / ".join(f"{r['rps']:,.0f}" for r in rows)
        mirror = " / ".join(f"{r['mirrored']}/{r['dropped']}" for r in rows)
        cpus = " / ".join(f"{r['cpu_us_per_request']:.0f}" for r in rows)
        print(
            f"| {label} | {rates} | {statistics.mean(r['rps'] for r in rows):,.0f} "
            f"| {statistics.median(r['p50_ms'] for r in rows):.2f} "
            f"| {statistics.median(r['p99_ms'] for r in rows):.2f} | {cpus} | {mirror} |"
        )


if __name__ == "__main__":
    main()
