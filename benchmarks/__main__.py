"""`python -m benchmarks`: load the fleet and write the figures as JSON (and a table).

python -m benchmarks load --target 127.0.0.1:50051 --model iris -c 16 -d 10 --rows 1
python -m benchmarks fleet            # the issue-2 matrix: batching on/off, c=1/16/64
python -m benchmarks run              # `make bench`: every scenario available
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks import iris_models
from benchmarks.ceiling import ort_ceiling
from benchmarks.loadgen import LoadSpec, process_cpu_s, run_load
from benchmarks.servers import start_replicas

RESULTS = Path(__file__).parent / "results"


def cmd_load(args: argparse.Namespace) -> dict:
    spec = LoadSpec(
        target=args.target,
        model=args.model,
        version=args.version,
        concurrency=args.concurrency,
        duration_s=args.duration,
        rows=args.rows,
        width=args.width,
        processes=args.processes,
    )
    result = run_load(spec)
    print(result.line())
    return {"load": asdict(result)}


def fleet_matrix(duration: float, concurrencies: list[int], processes: int) -> dict:
    """Single-row iris LR requests with batching on and off, plus the in-process ceiling."""
    repo = Path(tempfile.mkdtemp(prefix="bench-repo-"))
    iris_models.write_version(repo, "iris", "1", iris_models.train("lr"))
    cells = []
    for label, extra in (("batching on", []), ("batching off", ["--no-batching"])):
        server = start_replicas(repo, replicas=1, extra_args=extra)
        try:
            for concurrency in concurrencies:
                spec = LoadSpec(
                    target=server.target,
                    model="iris",
                    concurrency=concurrency,
                    duration_s=duration,
                    processes=processes,
                )
                cpu_before = process_cpu_s(server.pids[0])
                result = run_load(spec)
                server_cpu = process_cpu_s(server.pids[0]) - cpu_before
                print(f"{label:>12} {result.line()}  server cpu {server_cpu:.1f}s")
                cells.append({"server": label, "server_cpu_s": server_cpu, **asdict(result)})
        finally:
            server.stop()
    ceiling = ort_ceiling(repo / "iris" / "1" / "model.onnx", rows=1, width=4)
    print(
        f"in-process onnxruntime, 1 row: {ceiling['calls_per_s']:.0f} calls/s "
        f"({ceiling['us_per_call']:.1f} µs per call)"
    )
    return {"scenario": "fleet", "model": "iris LR", "cells": cells, "ort_ceiling_1_row": ceiling}


def markdown(result: dict) -> str:
    lines = [
        "| server | concurrency | req/s | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for cell in result["cells"]:
        lines.append(
            f"| {cell['server']} | {cell['spec']['concurrency']} | {cell['rps']:.0f} | "
            f"{cell['p50_ms']:.2f} | {cell['p99_ms']:.2f} | {cell['errors']} |"
        )
    ceiling = result["ort_ceiling_1_row"]
    lines.append(
        f"| in-process onnxruntime (ceiling) | 1 | {ceiling['calls_per_s']:.0f} | "
        f"{ceiling['us_per_call'] / 1000:.3f} | | |"
    )
    return "\n".join(lines)


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load", help="closed-loop load against a running server")
    load.add_argument("--target", default="127.0.0.1:50051")
    load.add_argument("--model", required=True)
    load.add_argument("--version", default="")
    load.add_argument("-c", "--concurrency", type=int, default=16)
    load.add_argument("-d", "--duration", type=float, default=10.0)
    load.add_argument("--rows", type=int, default=1)
    load.add_argument("--width", type=int, default=4)
    load.add_argument("--processes", type=int, default=1, help="client processes")
    load.add_argument("--json", type=Path, help="write the result here")
    for name in ("fleet", "run"):
        scenario = sub.add_parser(name, help="start servers and run the fleet matrix")
        scenario.add_argument("-d", "--duration", type=float, default=10.0)
        scenario.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
        scenario.add_argument("--processes", type=int, default=1, help="client processes")
    args = parser.parse_args()
    if args.command == "load":
        result = cmd_load(args)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return
    result = fleet_matrix(args.duration, args.concurrency, args.processes)
    print(markdown(result))
    save("fleet", result)


if __name__ == "__main__":
    main()
