"""`/health` (the process is up) and `/ready` (everything the gateway needs answers)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from gateway.deps import Resources, ResourcesDep
from gateway.schemas import HealthOut, ReadyOut, error_responses
from mlops_core import fleet_state, worker_heartbeat

router = APIRouter(tags=["system"])

CHECK_TIMEOUT_S = 3.0
NO_WORKER = "no live pipeline worker"


@router.get("/health", response_model=HealthOut)
async def health() -> HealthOut:
    """The gateway process is up."""
    return HealthOut(status="ok")


@router.get(
    "/ready",
    response_model=ReadyOut,
    responses=error_responses((503, "not ready: mlflow, inference")),
)
async def ready(resources: ResourcesDep) -> ReadyOut | JSONResponse:
    """Redis, the database, MLflow and at least one live inference replica answer, and no
    pipeline worker lacks its sandbox. `workers` names the live workers and their sandbox."""
    names = ["redis", "database", "mlflow", "inference", "workers"]
    results = await asyncio.gather(
        *(
            _check(c)
            for c in (
                _redis(resources),
                _database(resources),
                _mlflow(resources),
                _replicas(resources),
                _workers(resources),
            )
        )
    )
    checks = dict(zip(names, results, strict=True))
    # NOTE: no live worker is reported but does not fail readiness: predictions and the API
    # work without one, and workers may start after the gateway.
    missing = [
        name
        for name, result in checks.items()
        if not result.startswith("ok") and result != NO_WORKER
    ]
    if missing:
        return JSONResponse(
            {"detail": f"not ready: {', '.join(missing)}", "checks": checks}, status_code=503
        )
    return ReadyOut(status="ready", checks=checks)


async def _check(probe: Awaitable[str]) -> str:
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
    return "ok" if await resources.registry.healthy() else "unreachable"


async def _replicas(resources: Resources) -> str:
    replicas = await fleet_state.live_replicas(resources.redis)
    return f"ok: {len(replicas)} live replicas" if replicas else "no live inference replica"


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
    return f"ok: {len(workers)} live workers, sandbox {', '.join(sandboxes)}"
