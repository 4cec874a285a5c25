"""The fleet's desired state and replica heartbeats in Redis: the contract between the
platform (pipeline deploy stage, gateway rollback) and the inference replicas.

Keys:
- `mlops:fleet:desired` hash: model name -> JSON `{"active": "3", "warm": ["2", "1"]}`.
  A model absent from the hash is served by no replica.
- `mlops:fleet:changed` channel: a model name is published whenever its entry changes.
- `mlops:fleet:replica:<replica_id>` string with a TTL: JSON `ReplicaReport`.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.asyncio import Redis

from mlops_core.errors import RolloutTimeout

DESIRED_KEY = "mlops:fleet:desired"
CHANGED_CHANNEL = "mlops:fleet:changed"
REPLICA_KEY_PREFIX = "mlops:fleet:replica:"


@dataclass(frozen=True)
class DesiredModel:
    active: str
    """The version every replica should serve by default."""
    warm: list[str] = field(default_factory=list)
    """Other versions to keep loaded, newest first, so switching to them is instant."""

    def versions(self) -> list[str]:
        return [self.active, *[v for v in self.warm if v != self.active]]


@dataclass
class ServedModel:
    active: str | None
    loaded: list[str]
    failed: dict[str, str] = field(default_factory=dict)
    """Versions that could not be loaded, with the reason."""


@dataclass
class ReplicaReport:
    replica_id: str
    grpc_address: str
    http_address: str
    models: dict[str, ServedModel]
    reported_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> ReplicaReport:
        data = json.loads(raw)
        models = {name: ServedModel(**m) for name, m in data.pop("models").items()}
        return cls(models=models, **data)


async def set_desired(redis: Redis, model: str, desired: DesiredModel) -> None:
    """Record the version that should serve (and those to keep warm) and notify replicas."""
    await redis.hset(DESIRED_KEY, model, json.dumps(asdict(desired)))
    await redis.publish(CHANGED_CHANNEL, model)


async def remove_desired(redis: Redis, model: str) -> None:
    """Stop serving a model everywhere."""
    await redis.hdel(DESIRED_KEY, model)
    await redis.publish(CHANGED_CHANNEL, model)


async def get_desired(redis: Redis) -> dict[str, DesiredModel]:
    raw: dict[Any, Any] = await redis.hgetall(DESIRED_KEY)
    return {_text(k): DesiredModel(**json.loads(v)) for k, v in raw.items()}


async def get_desired_model(redis: Redis, model: str) -> DesiredModel | None:
    raw = await redis.hget(DESIRED_KEY, model)
    return DesiredModel(**json.loads(raw)) if raw else None


async def write_heartbeat(redis: Redis, report: ReplicaReport, ttl_s: float) -> None:
    await redis.set(REPLICA_KEY_PREFIX + report.replica_id, report.to_json(), px=int(ttl_s * 1000))


async def clear_heartbeat(redis: Redis, replica_id: str) -> None:
    await redis.delete(REPLICA_KEY_PREFIX + replica_id)


async def live_replicas(redis: Redis) -> list[ReplicaReport]:
    """Replicas whose heartbeat has not expired."""
    keys = [k async for k in redis.scan_iter(match=REPLICA_KEY_PREFIX + "*", count=100)]
    if not keys:
        return []
    values = await redis.mget(keys)
    return sorted(
        (ReplicaReport.from_json(v) for v in values if v is not None),
        key=lambda r: r.replica_id,
    )


def rollout_done(replicas: list[ReplicaReport], model: str, version: str | None) -> bool:
    """True when at least one replica is live and every live one reports `version` active
    (or, for `version=None`, none serves the model any more)."""
    if not replicas:
        return False
    if version is None:
        return all(model not in r.models for r in replicas)
    return all(
        (served := r.models.get(model)) is not None and served.active == version for r in replicas
    )


async def wait_for_rollout(
    redis: Redis, model: str, version: str | None, timeout_s: float, poll_s: float = 0.1
) -> list[ReplicaReport]:
    """Wait until every live replica serves `version` of `model`; raise RolloutTimeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        replicas = await live_replicas(redis)
        if rollout_done(replicas, model, version):
            return replicas
        if time.monotonic() >= deadline:
            lagging = {
                r.replica_id: (r.models[model].active if model in r.models else None)
                for r in replicas
            }
            failures = {
                r.replica_id: r.models[model].failed.get(version or "", "")
                for r in replicas
                if model in r.models and version and version in r.models[model].failed
            }
            detail = f"replicas report {lagging}" if replicas else "no live inference replica"
            if failures:
                detail += f"; load failures: {failures}"
            raise RolloutTimeout(
                f"model {model!r} version {version!r} not active on every replica after "
                f"{timeout_s:.0f}s: {detail}"
            )
        await asyncio.sleep(poll_s)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
