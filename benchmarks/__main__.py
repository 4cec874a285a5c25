"""`python -m benchmarks`: measure the fleet and the gateway (and their peers), write JSON, and
render the report.

python -m benchmarks run      # `make bench`: our fleet, the gateway, the minimal peer, swaps
python -m benchmarks peers    # `make bench-peers`: the same plus MLServer; updates latest/
python -m benchmarks report benchmarks/results/<run>/results.json   # render again
python -m benchmarks load --target 127.0.0.1:50051 --model iris -c 16 -d 10   # one load
python -m benchmarks deps     # `make bench-deps`: install h2load and wrk (apt-get)
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks import report
from benchmarks.loadgen import LoadSpec, run_load
from benchmarks.scenarios import GRPC_LOADS, Plan, run
from benchmarks.tools import ToolMissing, find_tools, install

HERE = Path(__file__).parent
RESULTS = HERE / "results"
LATEST = HERE / "latest"
PARTS = ("rest", "swap", "profile", "ceiling", "models", "push")


def cmd_load(args: argparse.Namespace) -> None:
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
    if args.json:
        args.json.write_text(json.dumps({"load": asdict(result)}, indent=2))


def cmd_bench(args: argparse.Namespace) -> None:
    plan = Plan(
        duration_s=args.duration,
        warmup_s=args.warmup,
        replicas=args.replicas,
        peers=args.command == "peers",
        servers=args.servers,
        loads=args.loads,
        skip=set(args.skip),
        swaps=args.swaps,
        grpc_client=args.client,
    )
    tools = find_tools("h2load", "wrk")
    run_dir = RESULTS / f"{args.command}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True)
    print(f"writing to {run_dir}", flush=True)
    results = run(plan, run_dir, tools)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    publish(results, run_dir, LATEST if args.command == "peers" and not args.no_publish else None)


def publish(results: dict, run_dir: Path, latest: Path | None) -> None:
    path, _ = report.render(results, run_dir)
    print(path.read_text())
    print(f"report: {path}")
    if latest is not None:
        latest.mkdir(exist_ok=True)
        for name in ("report.md", report.PLOT_FILE, "results.json"):
            if (run_dir / name).exists():
                shutil.copy2(run_dir / name, latest / name)
        print(f"published to {latest}")


def cmd_report(args: argparse.Namespace) -> None:
    results = json.loads(args.results.read_text())
    path, _ = report.render(results, args.out or args.results.parent)
    print(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load", help="closed-loop Python gRPC load against a running server")
    load.add_argument("--target", default="127.0.0.1:50051")
    load.add_argument("--model", required=True)
    load.add_argument("--version", default="")
    load.add_argument("-c", "--concurrency", type=int, default=16)
    load.add_argument("-d", "--duration", type=float, default=10.0)
    load.add_argument("--rows", type=int, default=1)
    load.add_argument("--width", type=int, default=4)
    load.add_argument("--processes", type=int, default=1, help="client processes")
    load.add_argument("--json", type=Path, help="write the result here")
    for name, text in (
        ("run", "our fleet, the gateway and the minimal peer (make bench)"),
        ("peers", "the same plus MLServer, published to benchmarks/latest (make bench-peers)"),
    ):
        bench = sub.add_parser(name, help=text)
        bench.add_argument("-d", "--duration", type=float, default=10.0, help="seconds per cell")
        bench.add_argument("--warmup", type=float, default=1.0, help="seconds before each cell")
        bench.add_argument("--replicas", type=int, default=2, help="N of the larger fleet")
        bench.add_argument("--servers", nargs="+", help="only these server keys")
        bench.add_argument(
            "--loads", nargs="+", choices=[g.key for g in GRPC_LOADS], help="only these loads"
        )
        bench.add_argument("--skip", nargs="+", default=[], choices=PARTS, help="leave out")
        bench.add_argument("--swaps", type=int, default=20)
        bench.add_argument("--client", choices=["h2load", "python"], default="h2load")
        bench.add_argument("--no-publish", action="store_true", help="keep latest/ as it is")
    rerender = sub.add_parser("report", help="render report.md and the plot from a results.json")
    rerender.add_argument("results", type=Path)
    rerender.add_argument("--out", type=Path, help="directory (default: beside the JSON)")
    sub.add_parser("deps", help="install h2load and wrk with apt-get (make bench-deps)")
    args = parser.parse_args()
    commands = {
        "load": cmd_load,
        "run": cmd_bench,
        "peers": cmd_bench,
        "report": cmd_report,
        "deps": lambda _: install(),
    }
    try:
        commands[args.command](args)
    except ToolMissing as exc:
        parser.exit(1, f"{exc}\n")


if __name__ == "__main__":
    main()
