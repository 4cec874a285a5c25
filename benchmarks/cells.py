"""One cell: one load against one running server group, validated first, with the CPU of the
client and of every server process recorded."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

import grpc
import numpy as np

from benchmarks import iris_models
from benchmarks.h2load import run_h2load
from benchmarks.loadgen import LoadSpec, run_load
from benchmarks.measure import CpuMeter, Measurement
from benchmarks.servers import ServerGroup
from benchmarks.wrk import run_wrk
from mlops_core.oip import infer_request, response_arrays
from mlops_core.protocol import open_inference_pb2 as pb
from mlops_core.protocol import open_inference_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class Load:
    key: str
    """Stable name used by the report, e.g. `lr-c64`."""
    protocol: str
    """`grpc` (ModelInfer) or `rest` (JSON predict)."""
    model: str
    rows: int
    concurrency: int


@dataclass
class Options:
    duration_s: float = 10.0
    warmup_s: float = 1.0
    grpc_client: str = "h2load"
    """`h2load` or `python` (the grpc.aio load generator)."""
    tools: dict[str, str] | None = None


def iris_rows(rows: int) -> np.ndarray:
    """`rows` real iris rows (spread over the three classes), float32."""
    x, _ = iris_models.iris()
    return x[(np.arange(rows) * 37) % len(x)]


def grpc_request(load: Load) -> pb.ModelInferRequest:
    return infer_request(load.model, {"input": iris_rows(load.rows)})


def validate_grpc(target: str, request: pb.ModelInferRequest, rows: int) -> dict[str, Any]:
    """One real gRPC call: it must succeed with one answer per row. Returns what it answered."""
    with grpc.insecure_channel(target) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    arrays = response_arrays(response)
    first = next(iter(arrays.values()))
    if first.shape[0] != rows:
        raise RuntimeError(f"validation: {rows} rows sent, {first.shape} answered by {target}")
    return {
        "model_version": response.model_version,
        "outputs": sorted(arrays),
        "response_bytes": response.ByteSize(),
    }


def post_json(url: str, body: str) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


def run_grpc(group: ServerGroup, load: Load, options: Options) -> dict[str, Any]:
    assert group.grpc_target is not None
    request = grpc_request(load)
    checked = validate_grpc(group.grpc_target, request, load.rows)
    meter = CpuMeter(group.pids())
    if options.grpc_client == "python":
        measured = python_measurement(group.grpc_target, load, options)
    else:
        assert options.tools is not None
        measured = run_h2load(
            options.tools["h2load"],
            group.grpc_target,
            request.SerializeToString(),
            load.concurrency,
            options.duration_s,
            options.warmup_s,
            checked["response_bytes"] + 5,
        )
    return record(group, load, measured, meter.stop(), checked)


def run_rest(group: ServerGroup, load: Load, url: str, body: str, options: Options) -> dict:
    """`url` is the full predict URL; `body` its JSON. One POST validates it first."""
    answer = post_json(url, body)
    assert options.tools is not None
    meter = CpuMeter(group.pids())
    measured = run_wrk(
        options.tools["wrk"], url, body, load.concurrency, options.duration_s, options.warmup_s
    )
    checked = {"answer": answer}
    return record(group, load, measured, meter.stop(), checked)


def python_measurement(target: str, load: Load, options: Options) -> Measurement:
    spec = LoadSpec(
        target=target,
        model=load.model,
        concurrency=load.concurrency,
        duration_s=options.duration_s,
        rows=load.rows,
        warmup_s=options.warmup_s,
    )
    result = run_load(spec)
    return Measurement(
        client="python",
        requests=result.requests + result.errors,
        errors=result.errors,
        elapsed_s=result.elapsed_s,
        rps=result.rps,
        p50_ms=result.p50_ms,
        p90_ms=result.p90_ms,
        p99_ms=result.p99_ms,
        client_cpu_s=round(result.client_cpu_s, 3),
    )


def record(
    group: ServerGroup,
    load: Load,
    measured: Measurement,
    server_cpu_s: dict[str, float],
    checked: dict[str, Any],
) -> dict[str, Any]:
    ok = measured.requests - measured.errors
    cell = {
        "server": group.name,
        "load": asdict(load),
        **asdict(measured),
        "rows_per_s": ok * load.rows / measured.elapsed_s if measured.elapsed_s else 0.0,
        "server_cpu_s": server_cpu_s,
        "validated": checked,
    }
    elapsed = max(measured.elapsed_s, 1e-9)
    cores = sum(server_cpu_s.values()) / elapsed
    print(
        f"  {group.name:<28} {load.key:<14} {measured.client:<6} {measured.rps:>8.0f} req/s  "
        f"p50 {measured.p50_ms:7.2f}  p99 {measured.p99_ms:7.2f} ms  errors {measured.errors}  "
        f"cpu server {cores:.2f} client {measured.client_cpu_s / elapsed:.2f}",
        flush=True,
    )
    for note in measured.notes:
        print(f"    note: {note}", flush=True)
    return cell
