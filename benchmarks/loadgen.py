"""A closed-loop gRPC load generator: N concurrent clients, each sending ModelInfer requests
back to back for a fixed time, over a few long-lived channels.

NOTE: a single Python client process tops out well below what the server can do; with
`processes > 1` the load comes from several processes (each with its own event loop and
channels), and their latencies are merged.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from dataclasses import asdict, dataclass, field

import grpc
import numpy as np

from benchmarks.measure import children_cpu_s, self_cpu_s
from mlops_core.oip import infer_request
from mlops_core.protocol import open_inference_pb2_grpc as pb_grpc


@dataclass
class LoadSpec:
    target: str
    model: str
    version: str = ""
    concurrency: int = 16
    duration_s: float = 10.0
    rows: int = 1
    width: int = 4
    channels: int = 4
    processes: int = 1
    warmup_s: float = 1.0


@dataclass
class LoadResult:
    spec: dict
    requests: int
    errors: int
    elapsed_s: float
    rps: float
    rows_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    client_cpu_s: float
    error_codes: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"c={self.spec['concurrency']:>3} rows={self.spec['rows']:>3}: "
            f"{self.rps:>8.0f} req/s {self.rows_per_s:>9.0f} rows/s  p50 {self.p50_ms:6.2f} ms  "
            f"p90 {self.p90_ms:6.2f} ms  p99 {self.p99_ms:6.2f} ms  errors {self.errors}"
        )


def _rows(spec: LoadSpec) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((spec.rows, spec.width)) * 4 + 1).astype(np.float32)


async def _drive(
    spec: LoadSpec, concurrency: int
) -> tuple[list[float], int, dict[str, int], float]:
    channels = [
        grpc.aio.insecure_channel(spec.target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(max(1, spec.channels))
    ]
    stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in channels]
    request = infer_request(spec.model, {"input": _rows(spec)}, version=spec.version)
    latencies: list[float] = []
    errors = 0
    codes: dict[str, int] = {}
    measuring = False
    stop_at = time.perf_counter() + spec.warmup_s + spec.duration_s

    async def client(index: int) -> None:
        nonlocal errors
        stub = stubs[index % len(stubs)]
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                return
            try:
                await stub.ModelInfer(request, timeout=30)
            except grpc.aio.AioRpcError as exc:
                if measuring:
                    errors += 1
                    codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
                continue
            if measuring:
                latencies.append(time.perf_counter() - started)

    async def measure_window() -> float:
        nonlocal measuring
        await asyncio.sleep(spec.warmup_s)
        measuring = True
        return time.perf_counter()

    window = asyncio.create_task(measure_window())
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - await window
    for channel in channels:
        await channel.close()
    return latencies, errors, codes, elapsed


def _worker(spec: LoadSpec, concurrency: int, queue: multiprocessing.Queue) -> None:
    try:
        import uvloop

        result = uvloop.run(_drive(spec, concurrency))
    except ImportError:
        result = asyncio.run(_drive(spec, concurrency))
    queue.put(result)


def run_load(spec: LoadSpec) -> LoadResult:
    """Run the load and summarise it; client CPU covers every client process."""
    cpu_before = children_cpu_s() + self_cpu_s()
    processes = max(1, min(spec.processes, spec.concurrency))
    shares = [
        spec.concurrency // processes + (i < spec.concurrency % processes) for i in range(processes)
    ]
    if processes == 1:
        try:
            import uvloop

            parts = [uvloop.run(_drive(spec, spec.concurrency))]
        except ImportError:
            parts = [asyncio.run(_drive(spec, spec.concurrency))]
    else:
        ctx = multiprocessing.get_context("spawn")
        queue: multiprocessing.Queue = ctx.Queue()
        workers = [ctx.Process(target=_worker, args=(spec, share, queue)) for share in shares]
        for w in workers:
            w.start()
        parts = [queue.get(timeout=spec.duration_s + spec.warmup_s + 120) for _ in workers]
        for w in workers:
            w.join(timeout=30)
    latencies = np.array([x for part in parts for x in part[0]]) * 1000
    errors = sum(part[1] for part in parts)
    codes: dict[str, int] = {}
    for part in parts:
        for code, count in part[2].items():
            codes[code] = codes.get(code, 0) + count
    elapsed = max(part[3] for part in parts)
    n = len(latencies)
    pct = np.percentile(latencies, [50, 90, 99]) if n else np.array([np.nan] * 3)
    return LoadResult(
        spec=asdict(spec),
        requests=n,
        errors=errors,
        elapsed_s=elapsed,
        rps=n / elapsed if elapsed else 0.0,
        rows_per_s=n * spec.rows / elapsed if elapsed else 0.0,
        p50_ms=float(pct[0]),
        p90_ms=float(pct[1]),
        p99_ms=float(pct[2]),
        client_cpu_s=children_cpu_s() + self_cpu_s() - cpu_before,
        error_codes=codes,
    )
