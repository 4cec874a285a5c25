"""Gateway predict throughput and latency against gRPC straight to the fleet, in one run.

Starts Redis, two inference replicas (iris LR) and `python -m gateway` on free ports
(`benchmarks.servers`), then drives single-row predictions in a closed loop at each
concurrency with native clients, so the client is never the bottleneck: REST through the
gateway with wrk, and OIP ModelInfer straight to the replicas' shared gRPC port with h2load.

    python -m benchmarks.gateway_load --duration 10 --concurrency 16 64
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import grpc
import numpy as np

from benchmarks import iris_models
from benchmarks.h2load import run_h2load
from benchmarks.servers import ServerGroup, start_gateway, start_redis, start_replicas
from benchmarks.tools import find_tools
from benchmarks.wrk import run_wrk
from mlops_core.oip import infer_request
from mlops_core.protocol import open_inference_pb2_grpc as pb_grpc

ROW = [5.1, 3.5, 1.4, 0.2]


def start_stack(root: Path) -> tuple[ServerGroup, str, str]:
    """Redis, two replicas (iris LR) and the gateway over the replicas' private ports; returns
    the group, the gateway URL and the replicas' shared gRPC address for native clients."""
    iris_models.write_version(root / "models", "iris", "1", iris_models.train("lr"))
    group = ServerGroup("gateway-load")
    redis, redis_url = start_redis(root)
    replicas, shared_port, private_ports = start_replicas(root / "models", root, replicas=2)
    gateway, url = start_gateway(root, redis_url, private_ports)
    group.procs = {"redis": [redis], "replicas": replicas, "gateway": [gateway]}
    return group, url, f"127.0.0.1:{shared_port}"


def measure(
    url: str, grpc_target: str, levels: list[int], duration_s: float, warmup_s: float
) -> list[dict]:
    tools = find_tools("h2load", "wrk")
    request = infer_request("iris", {"input": np.asarray([ROW], dtype=np.float32)})
    with grpc.insecure_channel(grpc_target) as channel:
        answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    predict_url = f"{url}/models/iris/predict"
    body = json.dumps({"data": [ROW]})
    results = []
    for concurrency in levels:
        rest = run_wrk(tools["wrk"], predict_url, body, concurrency, duration_s, warmup_s)
        direct = run_h2load(
            tools["h2load"],
            grpc_target,
            request.SerializeToString(),
            concurrency,
            duration_s,
            warmup_s,
            answer.ByteSize() + 5,
        )
        for path, measured in (("gateway REST (wrk)", rest), ("gRPC direct (h2load)", direct)):
            result = {"path": path, "concurrency": concurrency, **asdict(measured)}
            print(
                f"{path:<22} c={concurrency:<3} {measured.rps:8.0f} req/s  "
                f"p50 {measured.p50_ms:7.2f} ms  p99 {measured.p99_ms:7.2f} ms  "
                f"errors {measured.errors}",
                flush=True,
            )
            results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        group, url, target = start_stack(Path(tmp))
        try:
            results = measure(url, target, args.concurrency, args.duration, args.warmup)
        finally:
            group.stop()
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
