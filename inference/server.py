"""Assemble and run one inference replica: gRPC server, status HTTP, standalone or fleet mode."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from grpc_health.v1 import health, health_pb2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis

from inference.api_key import OPEN_METHODS, REFUSAL, ApiKeyCheck
from inference.grpc_server import CallContext, CoreServer, UnaryMethod, unary_methods
from inference.memory import rss_bytes
from inference.metrics import ReplicaMetrics
from inference.reconcile import FleetReconciler
from inference.repository import BatchingPolicy, ModelRepository
from inference.servicer import InferenceServicer
from inference.sources import (
    DirectorySource,
    MlflowSource,
    ModelSource,
    models_on_disk,
    versions_on_disk,
)
from inference.status_http import StatusHttpServer
from mlops_core import gc_tuning
from mlops_core.errors import MlopsError, ModelNotResident, Unauthorized
from mlops_core.fleet_state import DesiredModel
from mlops_core.protocol import open_inference_pb2 as pb
from mlops_core.settings import Settings

log = logging.getLogger(__name__)
SERVICE_NAME = "inference.GRPCInferenceService"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


@dataclass
class ReplicaOptions:
    """What one replica needs beyond the shared settings."""

    model_repository: Path
    grpc_port: int
    http_port: int
    private_grpc_port: int | None = None
    private_host: str | None = None
    """Address of the private gRPC port and the HTTP status port; None: the gRPC host."""
    redis_url: str | None = None
    model_source: str = "directory"


async def load_standalone(repository: ModelRepository, root: Path) -> None:
    """Load the newest `keep_versions` versions of every model on disk; the newest that loads
    becomes active. Under a memory budget, versions load while they fit in free room, every
    model's active version before any older one; the rest load on their first request."""
    newest_first = {
        name: list(reversed(versions_on_disk(root, name)[-repository.keep_versions :]))
        for name in models_on_disk(root)
    }
    warm: dict[str, list[str]] = {}
    for name, versions in newest_first.items():
        repository.set_desired(name, DesiredModel(active=versions[0], warm=versions[1:]))
        for index, version in enumerate(versions):
            try:
                await repository.load(name, version, make_room=False)
            except ModelNotResident:
                break  # no room: the newest version loads on its first request
            except MlopsError as exc:
                log.error("skipping %s version %s: %s", name, version, exc.message)
                continue
            repository.activate(name, version)
            warm[name] = versions[index + 1 :]
            break
    for name, versions in warm.items():
        for version in versions:
            try:
                await repository.load(name, version, make_room=False)
            except ModelNotResident:
                return  # no room left for warm versions
            except MlopsError as exc:
                log.error("skipping %s version %s: %s", name, version, exc.message)


class Replica:
    def __init__(self, settings: Settings, options: ReplicaOptions) -> None:
        self.settings = settings
        self.options = options
        self.metrics = ReplicaMetrics()
        self.repository = ModelRepository(
            self._source(),
            self.metrics,
            BatchingPolicy(
                enabled=settings.batching,
                max_batch_size=settings.max_batch_size,
                max_queue_delay_us=settings.max_queue_delay_us,
                min_fixed_cost_us=settings.batch_min_fixed_us,
            ),
            keep_versions=settings.keep_versions,
            intra_op_threads=settings.ort_intra_op_threads,
            memory_budget_bytes=settings.replica_memory_budget_mb * 2**20,
            cold_load_wait_s=settings.cold_load_wait_s,
        )
        self.ready = False
        self.health = health.HealthServicer()
        self.reconciler: FleetReconciler | None = None
        self.redis: Redis | None = None
        self.grpc_server: CoreServer | None = None
        self.http_server: StatusHttpServer | None = None

    def _source(self) -> ModelSource:
        root = self.options.model_repository
        if self.options.model_source == "mlflow":
            return MlflowSource(self.settings.mlflow_tracking_uri, root)
        if self.options.model_source != "directory":
            raise ValueError(f"unknown model source {self.options.model_source!r}")
        return DirectorySource(root)

    async def start(self) -> None:
        limit = self.settings.max_message_bytes
        key = self.settings.api_key
        service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
        servicer = InferenceServicer(self.repository, lambda: self.ready)
        methods = {
            **unary_methods(service, pb, servicer, OPEN_METHODS),
            HEALTH_CHECK: UnaryMethod(
                health_pb2.HealthCheckRequest.FromString, self._health_check, open=True
            ),
        }
        self.grpc_server = CoreServer(
            methods,
            threads=self.settings.grpc_threads,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 1),
                *connection_age_options(self.settings),
            ],
            # NOTE: no check at all without a key: the hot path stays as it was.
            authorized=ApiKeyCheck(key) if key else None,
            refusal=(Unauthorized.grpc_code, REFUSAL),
        )
        for service_name in ("", SERVICE_NAME):
            self.health.set(service_name, health_pb2.HealthCheckResponse.NOT_SERVING)
        host = self.settings.grpc_host
        private_host = self.options.private_host or host
        self.grpc_server.add_insecure_port(f"{host}:{self.options.grpc_port}")
        if self.options.private_grpc_port:
            self.grpc_server.add_insecure_port(f"{private_host}:{self.options.private_grpc_port}")
        self.grpc_server.start()
        self.http_server = StatusHttpServer(
            private_host,
            self.options.http_port,
            {"/health": self._health, "/ready": self._ready, "/metrics": self._metrics},
        )
        await self.http_server.start()
        log.info(
            "replica %s: gRPC on %s:%s, HTTP on %s:%s%s",
            self.settings.replica_id,
            host,
            self.options.grpc_port,
            private_host,
            self.options.http_port,
            ", API key required" if self.settings.api_key else "",
        )
        if self.options.redis_url:
            await self._start_fleet_mode(self.options.redis_url)
        else:
            await load_standalone(self.repository, self.options.model_repository)
        await self._mark_ready()

    def _health_check(
        self, request: health_pb2.HealthCheckRequest, context: CallContext
    ) -> health_pb2.HealthCheckResponse:
        # NOTE: grpc_health's Check uses only set_code of its context, which CallContext has.
        return self.health.Check(request, cast(Any, context))

    async def _start_fleet_mode(self, redis_url: str) -> None:
        self.redis = Redis.from_url(redis_url)
        port = self.options.private_grpc_port or self.options.grpc_port
        self.reconciler = FleetReconciler(
            self.repository,
            self.redis,
            replica_id=self.settings.replica_id,
            grpc_address=f"{_advertised_host()}:{port}",
            http_address=f"http://{_advertised_host()}:{self.options.http_port}",
            resync_interval_s=self.settings.resync_interval_s,
            heartbeat_interval_s=self.settings.heartbeat_interval_s,
            heartbeat_ttl_s=self.settings.heartbeat_ttl_s,
        )
        await self.reconciler.start()
        await self.reconciler.synced.wait()

    async def _mark_ready(self) -> None:
        gc_tuning.tune_for_serving()
        self.ready = True
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("replica %s ready: %s", self.settings.replica_id, self.repository.model_names())

    async def stop(self, grace_s: float = 5.0) -> None:
        self.ready = False
        self.health.enter_graceful_shutdown()
        if self.reconciler is not None:
            await self.reconciler.stop()
        if self.grpc_server is not None:
            stopped = self.grpc_server.stop(grace_s)
            await asyncio.to_thread(stopped.wait)
        if self.http_server is not None:
            await self.http_server.stop()
        if self.redis is not None:
            await self.redis.aclose()

    def _health(self) -> tuple[int, str, bytes]:
        served = {
            name: {"active": m.active, "loaded": m.loaded, "failed": m.failed}
            for name, m in self.repository.served().items()
        }
        body = {
            "status": "ok",
            "ready": self.ready,
            "replica_id": self.settings.replica_id,
            "models": served,
            "memory": self._memory(),
        }
        return 200, "application/json", json.dumps(body).encode()

    def _memory(self) -> dict[str, object]:
        """The memory budget's state: resident versions and their measured bytes, and how
        often versions were loaded, evicted and waited for (the /metrics counters)."""
        resident = self.repository.resident()
        sample = self.metrics.registry.get_sample_value
        now = time.monotonic()
        return {
            "budget_bytes": self.repository.memory_budget_bytes,
            "resident_bytes": sum(loaded.memory_bytes for loaded in resident.values()),
            "process_rss_bytes": rss_bytes(),
            "resident_versions": {
                f"{name}/{version}": {
                    "bytes": loaded.memory_bytes,
                    "idle_s": round(now - loaded.last_used, 3),
                    "in_flight": len(loaded.in_flight),
                }
                for (name, version), loaded in sorted(resident.items())
            },
            "loads": int(sample("mlops_inference_version_loads_total") or 0),
            "evictions": int(sample("mlops_inference_version_evictions_total") or 0),
            "cold_load_waits": {
                outcome: int(
                    sample("mlops_inference_cold_load_waits_total", {"outcome": outcome}) or 0
                )
                for outcome in ("served", "timeout", "no_room")
            },
        }

    def _ready(self) -> tuple[int, str, bytes]:
        status = 200 if self.ready else 503
        return status, "application/json", json.dumps({"ready": self.ready}).encode()

    def _metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry)


def connection_age_options(settings: Settings) -> list[tuple[str, int]]:
    """gRPC server options that end each connection after the configured age.

    NOTE: grpcio clients resolve a DNS name again only when a connection ends (grpc/grpc#30015),
    so without an age a client balancing over a headless Service never learns of a replica
    added after it connected. The GOAWAY lets calls in flight finish within the grace period
    while new ones move to another (or a new) connection, so no call fails."""
    if settings.grpc_max_connection_age_s <= 0:
        return []
    return [
        ("grpc.max_connection_age_ms", round(settings.grpc_max_connection_age_s * 1000)),
        (
            "grpc.max_connection_age_grace_ms",
            round(settings.grpc_max_connection_age_grace_s * 1000),
        ),
    ]


def _advertised_host() -> str:
    import socket

    return socket.gethostname() if _in_container() else "127.0.0.1"


def _in_container() -> bool:
    return Path("/.dockerenv").exists() or Path("/var/run/secrets/kubernetes.io").exists()


async def run_replica(settings: Settings, options: ReplicaOptions) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully (in-flight requests finish)."""
    replica = Replica(settings, options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(replica.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done() and (failure := starting.exception()) is not None:
        await replica.stop(0)
        raise failure
    await stopping
    starting.cancel()
    log.info("replica %s stopping", settings.replica_id)
    await replica.stop()
