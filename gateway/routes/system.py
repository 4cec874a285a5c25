"""`/health` (the process is up) and `/ready` (everything the gateway needs answers)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from gateway.deps import Resources, ResourcesDep
from gateway.schemas import HealthOut, ReadyOut, error_responses
from mlops_core import fleet_state

router = APIRouter(tags=["system"])

CHECK_TIMEOUT_S = 3.0


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
    """Redis, the database, MLflow and at least one live inference replica answer."""
    names = ["redis", "database", "mlflow", "inference"]
    results = await asyncio.gather(
        *(
            _check(c)
            for c in (
                _redis(resources),
                _database(resources),
                _mlflow(resources),
                _replicas(resources),
            )
        )
    )
    checks = dict(zip(names, results, strict=True))
    missing = [name for name, result in checks.items() if not result.startswith("ok")]
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
