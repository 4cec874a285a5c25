"""Version swaps under load: a fleet in fleet mode serves closed-loop gRPC calls while the
desired version changes 20 times (each a new version to load, as a pipeline deploy does), and
every answer's status and version is seen, so errors cannot hide.

The Python grpc.aio client drives this one (h2load cannot see gRPC errors); steady p99 and
p99 during the swaps come from the same client in the same run.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc
import numpy as np
from redis.asyncio import Redis

from benchmarks.measure import self_cpu_s
from mlops_core import fleet_state
from mlops_core.fleet_state import version_key
from mlops_core.protocol import open_inference_pb2 as pb
from mlops_core.protocol import open_inference_pb2_grpc as pb_grpc


@dataclass
class Call:
    started: float
    latency_s: float
    version: str
    code: str
    """`OK` or the gRPC status name."""


def phase_summary(calls: list[Call], start: float, end: float) -> dict:
    """Calls that started in [start, end): throughput, percentiles, errors and versions."""
    inside = [c for c in calls if start <= c.started < end]
    ok = np.array([c.latency_s for c in inside if c.code == "OK"]) * 1000
    codes: dict[str, int] = {}
    for call in inside:
        if call.code != "OK":
            codes[call.code] = codes.get(call.code, 0) + 1
    p50, p90, p99 = np.percentile(ok, [50, 90, 99]) if ok.size else (float("nan"),) * 3
    return {
        "seconds": end - start,
        "requests": len(inside),
        "rps": len(inside) / (end - start) if end > start else 0.0,
        "errors": sum(codes.values()),
        "error_codes": codes,
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "versions_seen": sorted({c.version for c in inside if c.code == "OK"}, key=version_key),
    }


async def swap_under_load(
    target: str,
    redis_url: str,
    request: pb.ModelInferRequest,
    versions: list[str],
    concurrency: int,
    steady_s: float,
    warmup_s: float = 1.0,
    rollout_timeout_s: float = 60.0,
    channels: int = 4,
) -> dict:
    """Steady load for `steady_s`, then one rollout per entry of `versions`, in order, each
    awaited with `wait_for_rollout` (the previous version kept warm, as a deploy does).

    NOTE: a rollout of a small model takes tens of milliseconds, so back-to-back swaps would
    give a window too short for a p99; they are spread over another `steady_s` instead, so
    both phases hold about as many calls."""
    redis = Redis.from_url(redis_url)
    opened = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in opened]
    calls: list[Call] = []
    stopping = False

    async def client(index: int) -> None:
        stub = stubs[index % len(stubs)]
        while not stopping:
            started = time.perf_counter()
            try:
                response = await stub.ModelInfer(request, timeout=30)
            except grpc.aio.AioRpcError as exc:
                calls.append(Call(started, time.perf_counter() - started, "", exc.code().name))
                continue
            calls.append(Call(started, time.perf_counter() - started, response.model_version, "OK"))

    cpu_before = self_cpu_s()
    clients = [asyncio.create_task(client(i)) for i in range(concurrency)]
    rollouts: list[float] = []
    try:
        await asyncio.sleep(warmup_s)
        steady_start = time.perf_counter()
        await asyncio.sleep(steady_s)
        swaps_start = time.perf_counter()
        previous = await fleet_state.get_desired_model(redis, request.model_name)
        interval = steady_s / max(1, len(versions))
        for version in versions:
            began = time.perf_counter()
            # NOTE: one version warm, the one serving before, as a deploy keeps it.
            desired = fleet_state.next_desired(previous, version, keep_versions=2)
            await fleet_state.set_desired(redis, request.model_name, desired)
            await fleet_state.wait_for_rollout(
                redis, request.model_name, version, rollout_timeout_s, poll_s=0.02
            )
            rollouts.append(time.perf_counter() - began)
            previous = desired
            await asyncio.sleep(max(0.0, began + interval - time.perf_counter()))
        swaps_end = time.perf_counter()
    finally:
        stopping = True
        await asyncio.gather(*clients)
        for channel in opened:
            await channel.close()
        await redis.aclose()
    elapsed = time.perf_counter() - steady_start
    return {
        "concurrency": concurrency,
        "swaps": len(versions),
        "steady": phase_summary(calls, steady_start, swaps_start),
        "during_swaps": phase_summary(calls, swaps_start, swaps_end),
        "rollout_s": {
            "median": float(np.median(rollouts)),
            "max": float(np.max(rollouts)),
            "each": [round(r, 3) for r in rollouts],
        },
        "last_version": versions[-1],
        "client_cpu_s": round(self_cpu_s() - cpu_before, 3),
        "elapsed_s": elapsed,
    }
