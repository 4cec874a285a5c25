"""What the platform knows about models (MLflow registry, desired state, replica reports) and
the fleet-wide changes the gateway makes: rollback and removal.

NOTE: MLflow is read through its REST API with httpx rather than `MlflowClient`, whose
requests retry with exponential backoff for minutes when the server is down; here a listing
must answer within seconds and say the registry was unreachable.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from redis.asyncio import Redis
from sqlalchemy.orm import Session, sessionmaker

from gateway.schemas import (
    CandidateOut,
    ModelOut,
    ModelVersionOut,
    ReplicaServing,
    RollbackOut,
)
from mlops_core import fleet_state, rollouts
from mlops_core.errors import ModelNotFound, ModelNotReady
from mlops_core.fleet_state import DesiredModel, ReplicaReport, version_key
from mlops_core.rollouts import CHALLENGER, CHAMPION, Command

REGISTRY_TIMEOUT_S = 3.0
_PAGE = 1000


@dataclass
class Registry:
    """The MLflow model registry, over its REST API."""

    http: httpx.AsyncClient
    tracking_uri: str

    async def versions(self, model: str | None = None) -> dict[str, list[ModelVersionOut]] | None:
        """Registered versions by model name (of one model, or all); None if unreachable."""
        params: dict[str, Any] = {"max_results": _PAGE}
        if model is not None:
            params["filter"] = f"name='{model}'"
        found: dict[str, list[ModelVersionOut]] = {}
        try:
            while True:
                response = await self.http.get(
                    f"{self.tracking_uri}/api/2.0/mlflow/model-versions/search",
                    params=params,
                    timeout=REGISTRY_TIMEOUT_S,
                )
                response.raise_for_status()
                body = response.json()
                for v in body.get("model_versions", []):
                    found.setdefault(v["name"], []).append(_version_out(v))
                if not body.get("next_page_token"):
                    break
                params["page_token"] = body["next_page_token"]
        except (httpx.HTTPError, ValueError, KeyError):
            return None
        for versions in found.values():
            versions.sort(key=lambda v: version_key(v.version))
        return found

    async def healthy(self) -> bool:
        try:
            response = await self.http.get(
                f"{self.tracking_uri}/health", timeout=REGISTRY_TIMEOUT_S
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200


def _version_out(raw: dict[str, Any]) -> ModelVersionOut:
    created = raw.get("creation_timestamp")
    return ModelVersionOut(
        version=str(raw["version"]),
        status=raw.get("status"),
        run_id=raw.get("run_id") or None,
        created_at=datetime.fromtimestamp(int(created) / 1000, UTC) if created else None,
    )


def _serving(report: ReplicaReport, model: str) -> ReplicaServing | None:
    served = report.models.get(model)
    if served is None:
        return None
    return ReplicaServing(
        replica_id=report.replica_id,
        grpc_address=report.grpc_address,
        active=served.active,
        loaded=list(served.loaded),
        failed=dict(served.failed),
    )


def _fleet_versions(
    model: str, desired: DesiredModel | None, replicas: list[ReplicaReport]
) -> set[str]:
    """Versions the fleet has or wants (failed loads excluded)."""
    versions = set(desired.versions()) if desired else set()
    for report in replicas:
        served = report.models.get(model)
        if served:
            versions |= {v for v in served.loaded if v not in served.failed}
            if served.active:
                versions.add(served.active)
    return versions


def describe_model(
    name: str,
    desired: DesiredModel | None,
    replicas: list[ReplicaReport],
    registered: list[ModelVersionOut] | None,
) -> ModelOut:
    versions = {v.version: v for v in registered or []}
    for version in _fleet_versions(name, desired, replicas):
        versions.setdefault(version, ModelVersionOut(version=version))
    return ModelOut(
        name=name,
        active_version=desired.active if desired else None,
        warm_versions=[v for v in desired.warm if v != desired.active] if desired else [],
        candidate=CandidateOut(
            version=desired.candidate.version,
            weight=desired.candidate.weight,
            mirror_rate=desired.candidate.mirror_rate,
        )
        if desired and desired.candidate
        else None,
        versions=sorted(versions.values(), key=lambda v: version_key(v.version)),
        replicas=[s for r in replicas if (s := _serving(r, name)) is not None],
    )


async def list_models(redis: Redis, registry: Registry) -> tuple[list[ModelOut], bool]:
    desired = (await fleet_state.get_desired(redis)).models
    replicas = await fleet_state.live_replicas(redis)
    registered = await registry.versions()
    names = set(desired) | {m for r in replicas for m in r.models} | set(registered or {})
    models = [
        describe_model(n, desired.get(n), replicas, (registered or {}).get(n))
        for n in sorted(names)
    ]
    return models, registered is not None


async def rollback(
    redis: Redis,
    sessions: sessionmaker[Session],
    registry: Registry,
    model: str,
    version: str,
    keep_versions: int,
    timeout_s: float,
) -> RollbackOut:
    """Make `version` active on every live replica, keeping the previous versions warm."""
    desired = await fleet_state.get_desired_model(redis, model)
    replicas = await fleet_state.live_replicas(redis)
    known = _fleet_versions(model, desired, replicas)
    if version not in known:
        registered = await registry.versions(model)
        if registered is None:
            raise ModelNotReady(
                f"cannot confirm that {model!r} version {version!r} exists: the fleet does not "
                "have it and the MLflow registry is unreachable"
            )
        if not known and model not in registered:
            raise ModelNotFound(f"model {model!r} not found")
        if version not in {v.version for v in registered.get(model, [])}:
            available = sorted(known | {v.version for v in registered.get(model, [])})
            raise ModelNotFound(
                f"model {model!r} has no version {version!r}; versions: {', '.join(available)}"
            )
    previous = desired.active if desired else None
    # NOTE: a running rollout ends too: the candidate leaves with this write, and its driver
    # is told why (it records the rollout aborted and does not put the candidate back).
    running = await asyncio.to_thread(rollouts.current, sessions, model)
    if running is not None:
        await rollouts.leave_command(
            redis, running.id, Command.ABORT, f"rolled back by hand to version {version}"
        )
    await fleet_state.set_desired(
        redis, model, fleet_state.next_desired(desired, version, keep_versions)
    )
    moves: dict[str, str | None] = {CHAMPION: version}
    if running is not None:
        moves[CHALLENGER] = None
    await rollouts.move_aliases(sessions, redis, model, moves, "rolled back by hand", None)
    if not replicas:
        raise ModelNotReady(
            f"{model!r} version {version!r} is now desired, but no inference replica is live"
        )
    served = await fleet_state.wait_for_rollout(redis, model, version, timeout_s)
    return RollbackOut(
        model=model,
        active_version=version,
        previous_version=previous,
        replicas=[s for r in served if (s := _serving(r, model)) is not None],
    )


async def remove(redis: Redis, model: str, timeout_s: float) -> None:
    """Stop serving `model` everywhere (its registered versions stay in MLflow)."""
    desired = await fleet_state.get_desired_model(redis, model)
    replicas = await fleet_state.live_replicas(redis)
    if desired is None and not any(model in r.models for r in replicas):
        raise ModelNotFound(f"model {model!r} is not deployed")
    await fleet_state.remove_desired(redis, model)
    if replicas:
        await fleet_state.wait_for_rollout(redis, model, None, timeout_s)
