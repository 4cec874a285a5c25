"""`python -m inference`: run one inference replica on a model repository.

Every flag falls back to its environment setting (see `.env.example`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvloop

from inference.cpus import pin_process
from inference.grpc_core import apply_server_experiments
from mlops_core.settings import Settings


def parse_args(settings: Settings, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m inference", description=__doc__)
    parser.add_argument(
        "--model-repository",
        type=Path,
        default=settings.model_repository,
        help="root of <model>/<version>/model.onnx (MLOPS_MODEL_REPOSITORY)",
    )
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=settings.grpc_port,
        help="shared gRPC port for clients (MLOPS_GRPC_PORT)",
    )
    parser.add_argument(
        "--private-grpc-port",
        type=int,
        default=None,
        help="this replica's own gRPC port, for a balancing gateway",
    )
    parser.add_argument(
        "--private-host",
        default=None,
        help="address of the private gRPC port and the HTTP status port, e.g. 127.0.0.1 "
        "(default: MLOPS_GRPC_HOST, as the public gRPC port)",
    )
    parser.add_argument(
        "--http-port",
        type=int,
        default=settings.http_port,
        help="/health, /ready and /metrics (MLOPS_HTTP_PORT)",
    )
    parser.add_argument(
        "--redis-url",
        default=settings.redis_url,
        help="fleet mode: follow the desired state in this Redis (REDIS_URL)",
    )
    parser.add_argument(
        "--replica-id", default=settings.replica_id, help="name in heartbeats (MLOPS_REPLICA_ID)"
    )
    parser.add_argument(
        "--model-source",
        choices=["directory", "mlflow"],
        default=settings.model_source,
        help="(MLOPS_MODEL_SOURCE)",
    )
    parser.add_argument("--max-batch-size", type=int, default=settings.max_batch_size)
    parser.add_argument("--max-queue-delay-us", type=int, default=settings.max_queue_delay_us)
    parser.add_argument(
        "--batch-min-fixed-us",
        type=int,
        default=settings.batch_min_fixed_us,
        help="batch only models whose calls cost this much whatever their rows "
        "(MLOPS_BATCH_MIN_FIXED_US)",
    )
    parser.add_argument("--no-batching", action="store_true", default=not settings.batching)
    parser.add_argument(
        "--grpc-threads",
        type=int,
        default=settings.grpc_threads,
        help="requests handled at once (MLOPS_GRPC_THREADS)",
    )
    parser.add_argument(
        "--cpus",
        default=settings.cpus,
        help="run on these CPUs only, e.g. 0 or 0-1 (MLOPS_CPUS); default: any",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    apply_server_experiments()
    # NOTE: imported only now: grpc core reads GRPC_EXPERIMENTS once, when it is first loaded.
    from inference.server import ReplicaOptions, run_replica

    settings = Settings()
    args = parse_args(settings, argv)
    settings = settings.model_copy(
        update={
            "replica_id": args.replica_id,
            "max_batch_size": args.max_batch_size,
            "max_queue_delay_us": args.max_queue_delay_us,
            "batch_min_fixed_us": args.batch_min_fixed_us,
            "batching": not args.no_batching,
            "grpc_threads": args.grpc_threads,
            "cpus": args.cpus,
        }
    )
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s [{args.replica_id}] %(name)s: %(message)s",
    )
    try:
        pinned = pin_process(settings.cpus)
    except ValueError as exc:
        raise SystemExit(f"python -m inference: {exc}") from exc
    if pinned is not None:
        logging.getLogger("inference").info("running on CPUs %s", sorted(pinned))
    options = ReplicaOptions(
        model_repository=args.model_repository.resolve(),
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        private_grpc_port=args.private_grpc_port,
        private_host=args.private_host,
        redis_url=args.redis_url,
        model_source=args.model_source,
    )
    # NOTE: the loop runs the control plane only (loading, fleet reconcile, status HTTP);
    # requests are served on the gRPC server's threads.
    uvloop.run(run_replica(settings, options))


if __name__ == "__main__":
    main()
