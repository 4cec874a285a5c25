"""`/health` (the process is up) and `/ready` (everything the gateway needs answers)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from gateway.deps import Resources, ResourcesDep
from gateway.schemas import HealthOut, ReadyOut, error_responses
from mlops_core import fleet_state, worker_heartbeat
from mlops_core.urls import shown_url

router = APIRouter(tags=["system"])

CHECK_TIMEOUT_S = 3.0
NO_WORKER = "no live pipeline worker"
MAX_MODELS_SHOWN = 20
T = TypeVar("T")


@router.get("/health", response_model=HealthOut)
async def health() -> HealthOut:
    """The gateway process is up."""
    return HealthOut(status="ok")


@router.get(
    "/ready",
    response_model=ReadyOut,
    responses=error_responses((503, "not ready: mlflow, workers")),
)
async def ready(resources: ResourcesDep) -> ReadyOut | JSONResponse:
    """Every component, each named in `checks`: Redis, the database, MLflow, the inference
    replicas (one entry each, with the versions it serves) and the pipeline workers. 503 names
    what is down: no live replica, no live worker, or a worker that cannot sandbox."""
    redis, database, mlflow, replicas, workers = await asyncio.gather(
        _check(_redis(resources)),
        _check(_database(resources)),
        _check(_mlflow(resources)),
        _check(_replicas(resources)),
        _check(_workers(resources)),
    )
    checks = {"redis": redis, "database": database, "mlflow": mlflow}
    if isinstance(replicas, str):
        checks["inference"] = replicas
    else:
        checks["inference"] = (
            f"ok: {len(replicas)} live replicas" if replicas else "no live inference replica"
        )
        checks.update({f"inference {r.replica_id}": _serving(r) for r in replicas})
    checks["workers"] = workers
    # NOTE: every check but the per-replica entries (a live replica is up; what it serves is
    # information, and a rollout in progress must not make the gateway unready).
    missing = [
        name
        for name, result in checks.items()
        if not result.startswith("ok") and not name.startswith("inference ")
    ]
    if missing:
        return JSONResponse(
            {"detail": f"not ready: {', '.join(missing)}", "checks": checks}, status_code=503
        )
    return ReadyOut(status="ready", checks=checks)


async def _check(probe: Awaitable[T]) -> T | str:
    """The probe's answer, or the reason it gave none."""
    try:
        return await asyncio.wait_for(probe, CHECK_TIMEOUT_S)
    except TimeoutError:
        return f"no answer in {CHECK_TIMEOUT_S:.0f}s"
    except Exception as exc:  # a readiness probe reports any failure instead of raising it
        return f"{type(exc).__name__}: {exc}"


async def _redis(resources: Resources) -> str:
    await resources.redis.ping()
    return "ok"


async def _database(resources: Resources) -> str:
    await resources.db(lambda session: session.execute(text("SELECT 1")))
    return "ok"


async def _mlflow(resources: Resources) -> str:
    if await resources.registry.healthy():
        return "ok"
    return f"unreachable at {shown_url(resources.settings.mlflow_tracking_uri)}"


async def _replicas(resources: Resources) -> list[fleet_state.ReplicaReport]:
    return sorted(await fleet_state.live_replicas(resources.redis), key=lambda r: r.replica_id)


def _serving(replica: fleet_state.ReplicaReport) -> str:
    """`ok: iris 2 (warm 1), petal 1`: each model's active version, the others it keeps
    loaded, and versions it failed to load."""
    models = sorted(replica.models.items())
    if not models:
        return "ok: serves no model"
    shown = []
    for name, served in models[:MAX_MODELS_SHOWN]:
        text = f"{name} {served.active or 'none active'}"
        warm = [v for v in served.loaded if v != served.active]
        if warm:
            text += f" (warm {', '.join(warm)})"
        if served.failed:
            text += f" (failed to load {', '.join(sorted(served.failed))})"
        shown.append(text)
    more = len(models) - MAX_MODELS_SHOWN
    return "ok: " + ", ".join(shown) + (f" and {more} more models" if more > 0 else "")


async def _workers(resources: Resources) -> str:
    workers = await worker_heartbeat.live_workers(resources.redis)
    if not workers:
        return NO_WORKER
    unboxed = [w for w in workers if w.sandbox_problem]
    if unboxed:
        return (
            f"{len(unboxed)} of {len(workers)} workers cannot sandbox pushed code, so their "
            f"pipelines fail: {unboxed[0].sandbox_problem}"
        )
    sandboxes = sorted({w.sandbox for w in workers})
    ids = sorted(w.worker_id for w in workers)
    return f"ok: {len(workers)} live workers ({', '.join(ids)}), sandbox {', '.join(sandboxes)}"
