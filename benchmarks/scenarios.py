"""The benchmark run: every server configuration under the same loads, the gateway over REST,
version swaps under load, the in-process ceilings, and the pipeline's push-to-served time.

Servers run one at a time, so each cell has the machine to itself (with its client).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import iris_models, many_models, push_to_served
from benchmarks.ceiling import ort_ceiling, ort_ceiling_on_cpus
from benchmarks.cells import Load, Options, grpc_request, iris_rows, run_grpc, run_rest
from benchmarks.measure import CpuMeter
from benchmarks.peers import (
    ensure_mlserver_venv,
    mlserver_rest_body,
    start_baseline,
    start_mlserver,
)
from benchmarks.processes import REPO_ROOT
from benchmarks.profile import profile_during
from benchmarks.servers import (
    ServerGroup,
    start_gateway,
    start_redis,
    start_replicas,
)
from benchmarks.swap import swap_under_load
from inference.cpus import replica_cpu
from mlops_core import fleet_state
from mlops_core.fleet_state import DesiredModel

MODELS = {"iris-lr": "lr", "iris-rf": "rf"}
"""Served model name -> `iris_models.train` kind (LR, RF; version 1 of each)."""

GRPC_LOADS = [
    Load("lr-c1", "grpc", "iris-lr", rows=1, concurrency=1),
    Load("lr-c16", "grpc", "iris-lr", rows=1, concurrency=16),
    Load("lr-c64", "grpc", "iris-lr", rows=1, concurrency=64),
    Load("rf-c64", "grpc", "iris-rf", rows=1, concurrency=64),
    Load("rf64rows-c16", "grpc", "iris-rf", rows=64, concurrency=16),
    Load("rf1024rows-c16", "grpc", "iris-rf", rows=1024, concurrency=16),
]
REST_LOAD = Load("rest-lr-c64", "rest", "iris-lr", rows=1, concurrency=64)
OIP_REST_LOAD = Load("oip-rest-lr-c64", "rest", "iris-lr", rows=1, concurrency=64)
OIP_ROUNDS = 3
"""Alternating rounds of the gateway's predict and OIP cells that the OIP goal compares."""
"""The same row through the gateway's Open Inference Protocol REST route (`/v2/.../infer`)."""
SWAP_MODEL = "iris-lr"


@dataclass
class Plan:
    duration_s: float = 10.0
    warmup_s: float = 1.0
    replicas: int = 2
    """N, the larger fleet (the smaller is always 1 replica)."""
    peers: bool = False
    """Include MLServer (its venv is created on first use)."""
    servers: list[str] | None = None
    """Only these server keys (None: all)."""
    loads: list[str] | None = None
    """Only these load keys (None: all)."""
    skip: set[str] = field(default_factory=set)
    """Parts to leave out: `rest`, `swap`, `profile`, `ceiling`, `models`."""
    swaps: int = 20
    swap_concurrency: int = 16
    grpc_client: str = "h2load"


def server_keys(plan: Plan) -> list[str]:
    n = plan.replicas
    keys = [
        "ours-1r",
        "ours-1r-batch",
        f"ours-{n}r",
        f"ours-{n}r-batch",
        "baseline",
        "baseline-pinned",
    ]
    if plan.peers:
        keys += ["mlserver", "mlserver-batch"]
    return [k for k in keys if plan.servers is None or k in plan.servers]


def run(plan: Plan, workdir: Path, tools: dict[str, str]) -> dict[str, Any]:
    """Everything the plan asks for, as one JSON-able dict; `tools` are the native clients'
    paths (`tools.find_tools`)."""
    mlserver = ensure_mlserver_venv() if plan.peers else None
    logs = workdir / "logs"
    repo = workdir / "models"
    joblib_files = {
        name: iris_models.write_version(repo, name, "1", iris_models.train(kind)) / "model.joblib"
        for name, kind in MODELS.items()
    }
    options = Options(plan.duration_s, plan.warmup_s, plan.grpc_client, tools)
    results: dict[str, Any] = {
        "meta": machine(tools, mlserver, plan),
        "plan": {**asdict(plan), "skip": sorted(plan.skip)},
        "cells": [],
        "failures": [],
    }
    if "ceiling" not in plan.skip:
        results["ceilings"] = ceilings(repo, plan.replicas)
    loads = [g for g in GRPC_LOADS if plan.loads is None or g.key in plan.loads]
    beside = None if "ceiling" in plan.skip else partial(fleet_ceiling, repo, plan.replicas)
    for key in server_keys(plan):
        print(f"{key}:", flush=True)
        start = server_starter(key, repo, workdir, joblib_files, mlserver)
        rest = key.startswith("mlserver") and "rest" not in plan.skip
        results["cells"] += with_group(
            start,
            results,
            key,
            lambda g, rest=rest: server_cells(g, loads, rest, options, beside),
        )
    if "rest" not in plan.skip:
        print(f"gateway over ours-{plan.replicas}r (fleet mode):", flush=True)
        results["cells"] += with_group(
            lambda: start_gateway_fleet(repo, logs, plan.replicas),
            results,
            "gateway",
            lambda g: gateway_cells(g, options, plan, workdir),
        )
    if "swap" not in plan.skip:
        print(f"{plan.swaps} version swaps under load:", flush=True)
        results["swap"] = swap_scenario(workdir, plan)
    if "profile" not in plan.skip:
        results["profile"] = results.get("profile", {})
        results["profile"]["replica"] = profile_replica(repo, logs, options, workdir)
    if "models" not in plan.skip:
        print("many models per replica:", flush=True)
        results["models"] = many_models.scenario(workdir, options)
    if "push" not in plan.skip:
        print("ten pushes through the whole platform (push to served):", flush=True)
        results["push"] = push_to_served.measure(10, workdir / "push")
    results["meta"]["loadavg_end"] = os.getloadavg()
    return results


def with_group(
    start: Callable[[], ServerGroup],
    results: dict[str, Any],
    key: str,
    work: Callable[[ServerGroup], Any],
) -> Any:
    """Start a server group, run `work` on it, always stop it; a failure is recorded (and
    the run goes on with the next server) rather than losing every figure measured so far."""
    try:
        group = start()
    except Exception as exc:  # any start failure of a peer is reported, not fatal
        results["failures"].append({"server": key, "error": f"start: {exc}"[:2000]})
        print(f"  {key} failed to start: {exc}", flush=True)
        return []
    try:
        return work(group)
    except Exception as exc:  # a broken cell is reported with the figures it did not get
        results["failures"].append({"server": key, "error": f"{type(exc).__name__}: {exc}"})
        print(f"  {key} failed: {exc}", flush=True)
        return []
    finally:
        group.stop()


def server_starter(
    key: str, repo: Path, workdir: Path, joblib_files: dict[str, Path], mlserver: Path | None
) -> Callable[[], ServerGroup]:
    logs = workdir / "logs"
    if key.startswith("baseline"):
        return lambda: start_baseline(repo, workdir, pinned=key == "baseline-pinned")
    if key.startswith("mlserver"):
        assert mlserver is not None
        return lambda: start_mlserver(mlserver, workdir, joblib_files, key == "mlserver-batch")
    _, replicas, *forced = key.split("-")
    # NOTE: defaults batch only models whose calls have a fixed cost worth sharing, which the
    # iris models have not; "-batch" forces batching on them, to show what it costs or buys.
    extra = ["--batch-min-fixed-us", "0"] if forced else []

    def start() -> ServerGroup:
        procs, port, _ = start_replicas(repo, logs / key, int(replicas[:-1]), extra)
        return ServerGroup(key, f"127.0.0.1:{port}", None, {"replicas": procs})

    return start


def server_cells(
    group: ServerGroup,
    loads: list[Load],
    rest: bool,
    options: Options,
    beside: Callable[[int], dict[str, Any]] | None = None,
) -> list:
    """The gRPC loads, then (for MLServer) the REST load on its v2 endpoint. `beside(rows)`,
    when given, measures the in-process ceiling right before and right after each many-row
    cell, which keeps their mean as its own `ceiling`."""
    cells = []
    for load in loads:
        if beside is None or load.rows == 1:
            cells.append(run_grpc(group, load, options))
            continue
        # NOTE: this machine's speed drifts by tens of percent within minutes, and other work
        # shares it; a ceiling measured minutes away from the cell would make the ratio a
        # comparison of two moments rather than of the server with the model.
        before = beside(load.rows)
        cell = run_grpc(group, load, options)
        after = beside(load.rows)
        cpu_us = (before["cpu_us_per_call"] + after["cpu_us_per_call"]) / 2
        cell["ceiling"] = {
            "rows_per_s": (before["rows_per_s"] + after["rows_per_s"]) / 2,
            "measured_rows_per_s": [before["rows_per_s"], after["rows_per_s"]],
            "cpu_us_per_call": cpu_us,
            "how": before["how"] if before["how"] == after["how"] else "best of both ways",
        }
        server_cpu_us = sum(cell["server_cpu_s"].values()) / max(cell["requests"], 1) * 1e6
        print(
            f"    in-process beside it: {before['rows_per_s']:.0f} / {after['rows_per_s']:.0f} "
            f"rows/s, the cell {cell['rows_per_s'] / cell['ceiling']['rows_per_s']:.2f} of "
            f"their mean; CPU per call {cpu_us:.0f} µs in process, {server_cpu_us:.0f} µs "
            "served",
            flush=True,
        )
        cells.append(cell)
    if rest:
        body = mlserver_rest_body(iris_rows(REST_LOAD.rows).tolist())
        url = f"{group.http_url}/v2/models/{REST_LOAD.model}/infer"
        cells.append(run_rest(group, REST_LOAD, url, body, options))
    return cells


def start_gateway_fleet(repo: Path, logs: Path, replicas: int) -> ServerGroup:
    """Redis, `replicas` replicas in fleet mode (defaults) and the gateway over them."""
    group = ServerGroup("gateway")
    try:
        redis, redis_url = start_redis(logs / "gateway")
        group.procs["redis"] = [redis]
        asyncio.run(desire_all(redis_url, {name: "1" for name in MODELS}))
        procs, port, private = start_replicas(repo, logs / "gateway", replicas, redis_url=redis_url)
        group.procs["replicas"] = procs
        group.grpc_target = f"127.0.0.1:{port}"
        gateway, url = start_gateway(logs / "gateway", redis_url, private)
        group.procs["gateway"] = [gateway]
        group.http_url = url
    except Exception:
        group.stop()
        raise
    return group


async def desire_all(redis_url: str, versions: dict[str, str]) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    for name, version in versions.items():
        await fleet_state.set_desired(redis, name, DesiredModel(active=version))
    await redis.aclose()


def gateway_cells(group: ServerGroup, options: Options, plan: Plan, workdir: Path) -> list[dict]:
    url = f"{group.http_url}/models/{REST_LOAD.model}/predict"
    body = json.dumps({"data": iris_rows(REST_LOAD.rows).tolist()})
    cells = [run_rest(group, REST_LOAD, url, body, options)]
    oip_url = f"{group.http_url}/v2/models/{OIP_REST_LOAD.model}/infer"
    oip_body = mlserver_rest_body(iris_rows(OIP_REST_LOAD.rows).tolist())
    cells.append(run_rest(group, OIP_REST_LOAD, oip_url, oip_body, options))
    # NOTE: one cell each, one after the other, differed by up to 15 % between runs on this
    # shared machine; the goal compares the two over alternating rounds instead.
    rounds = [[cells[0]["rows_per_s"], cells[1]["rows_per_s"]]]
    for _ in range(OIP_ROUNDS - 1):
        predict = run_rest(group, REST_LOAD, url, body, options)
        oip = run_rest(group, OIP_REST_LOAD, oip_url, oip_body, options)
        rounds.append([predict["rows_per_s"], oip["rows_per_s"]])
    cells[1]["rounds_vs_predict"] = rounds
    if "profile" not in plan.skip:
        gateway_pid = group.procs["gateway"][0].pid
        out = workdir / "profile-gateway.txt"
        profile = profile_during(
            gateway_pid,
            options.duration_s,
            out,
            lambda: run_rest(group, REST_LOAD, url, body, options),
        )
        cells[0]["profile"] = profile
    return cells


def profile_replica(repo: Path, logs: Path, options: Options, workdir: Path) -> dict:
    """An extra LR c=64 cell on one replica (defaults), sampled by py-spy."""
    procs, port, _ = start_replicas(repo, logs / "profile", 1)
    group = ServerGroup("ours-1r (profiled)", f"127.0.0.1:{port}", None, {"replicas": procs})
    load = next(g for g in GRPC_LOADS if g.key == "lr-c64")
    print("profiling one replica under lr-c64:", flush=True)
    try:
        return profile_during(
            procs[0].pid,
            options.duration_s,
            workdir / "profile-replica.txt",
            lambda: run_grpc(group, load, options),
        )
    finally:
        group.stop()


def swap_scenario(workdir: Path, plan: Plan) -> dict[str, Any]:
    """A fleet of N replicas in fleet mode; versions 2..swaps+1 rolled out one after another."""
    repo = workdir / "swap-models"
    versions = [str(v) for v in range(1, plan.swaps + 2)]
    for version in versions:
        iris_models.write_version(repo, SWAP_MODEL, version, iris_models.train("lr"))
    logs = workdir / "logs" / "swap"
    group = ServerGroup("swap")
    try:
        redis, redis_url = start_redis(logs)
        group.procs["redis"] = [redis]
        asyncio.run(desire_all(redis_url, {SWAP_MODEL: "1"}))
        procs, port, _ = start_replicas(repo, logs, plan.replicas, redis_url=redis_url)
        group.procs["replicas"] = procs
        meter = CpuMeter(group.pids())
        request = grpc_request(Load("swap", "grpc", SWAP_MODEL, 1, plan.swap_concurrency))
        result = asyncio.run(
            swap_under_load(
                f"127.0.0.1:{port}",
                redis_url,
                request,
                versions[1:],
                plan.swap_concurrency,
                steady_s=plan.duration_s,
                warmup_s=plan.warmup_s,
            )
        )
        result["server_cpu_s"] = meter.stop()
        result["replicas"] = plan.replicas
    finally:
        group.stop()
    steady, swaps = result["steady"], result["during_swaps"]
    print(
        f"  steady p99 {steady['p99_ms']:.2f} ms ({steady['rps']:.0f} req/s), during swaps "
        f"p99 {swaps['p99_ms']:.2f} ms ({swaps['rps']:.0f} req/s), errors "
        f"{steady['errors'] + swaps['errors']}, rollouts median "
        f"{result['rollout_s']['median']:.2f} s",
        flush=True,
    )
    return result


def fleet_cpus(replicas: int) -> list[int]:
    """The CPUs an N-replica fleet is pinned to (`start_replicas`); empty without pinning."""
    return sorted({int(cpu) for i in range(replicas) if (cpu := replica_cpu(i)) is not None})


def fleet_ceiling(repo: Path, replicas: int, rows: int) -> dict[str, Any]:
    """In-process RF on the fleet's CPUs, one thread per CPU, `rows`-row calls."""
    rf = repo / "iris-rf" / "1" / "model.onnx"
    return ort_ceiling_on_cpus(rf, rows=rows, width=4, cpus=fleet_cpus(replicas) or [0])


def ceilings(repo: Path, replicas: int) -> dict[str, dict[str, Any]]:
    """In-process onnxruntime: one thread, and on the CPUs the N-replica fleet is pinned to
    (the many-rows goals' ceiling): the figures no server of the same model can pass."""
    lr, rf = repo / "iris-lr" / "1" / "model.onnx", repo / "iris-rf" / "1" / "model.onnx"
    cpus = fleet_cpus(replicas)
    figures: dict[str, dict[str, Any]] = {
        "lr-1row": ort_ceiling(lr, rows=1, width=4),
        "rf-1row": ort_ceiling(rf, rows=1, width=4),
        "rf-64rows": ort_ceiling(rf, rows=64, width=4),
        "rf-1024rows": ort_ceiling(rf, rows=1024, width=4),
    }
    if cpus:
        for rows in (64, 1024):
            figures[f"rf-{rows}rows-fleet"] = {
                **ort_ceiling_on_cpus(rf, rows=rows, width=4, cpus=cpus),
                "cpus": cpus,
            }
    for name, figure in figures.items():
        print(
            f"in-process onnxruntime {name}: {figure['us_per_call']:.1f} µs per call, "
            f"{figure['rows_per_s']:.0f} rows/s {figure.get('how', '')}",
            flush=True,
        )
    return figures


def machine(tools: dict[str, str], mlserver: Path | None, plan: Plan) -> dict[str, Any]:
    import grpc
    import onnxruntime

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": _output(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
        + (" with uncommitted changes to the servers" if _servers_dirty() else ""),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "onnxruntime": onnxruntime.__version__,
        "h2load": _output([tools["h2load"], "--version"]),
        "wrk": _output([tools["wrk"], "-v"]).splitlines()[0] if shutil.which("wrk") else "",
        "mlserver": _output([str(mlserver), "--version"]) if mlserver else None,
        "loadavg_start": os.getloadavg(),
    }


def _servers_dirty() -> bool:
    status = ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--"]
    return bool(_output([*status, "inference", "gateway", "mlops_core"]))


def _output(argv: list[str]) -> str:
    run = subprocess.run(argv, capture_output=True, text=True, check=False)
    return (run.stdout or run.stderr).strip()
