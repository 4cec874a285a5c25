"""Rollouts as records: the policy per model, each rollout with its decisions, the alias
history, and the few Redis keys through which the gateway and the worker that drives a
rollout talk (a command by hand, the live figures, aliases MLflow still has to be told).

The worker running a pipeline drives that pipeline's rollout (`pipeline_worker.rollout`);
anyone may read these records, and the gateway may leave a command for the driver.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mlops_core.db import AliasEvent, PolicyRow, RolloutRow, session_scope, utcnow
from mlops_core.fleet_state import VersionStats
from mlops_core.rollout_analysis import Counters
from mlops_core.rollout_policy import DEFAULT_POLICY, RolloutPolicy, Strategy

CHAMPION, CHALLENGER = "champion", "challenger"
"""The MLflow aliases: the version that serves, and the one being rolled out."""


class RolloutState(StrEnum):
    RUNNING = "running"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    """A threshold was crossed: the candidate was taken away at once."""
    ABORTED = "aborted"
    """Ended without a verdict on the candidate: held too long, by hand, or superseded."""


class Decision(BaseModel):
    at: datetime
    step: int
    """Index into `steps` of the step judged."""
    action: str
    reason: str
    figures: dict[str, Any] | None = None
    """Each version's requests, errors, error rate and p99, and the agreement, for the step."""


class Step(BaseModel):
    weight: float
    """The candidate's share of unpinned requests (0 in a shadow step)."""
    started_at: datetime | None = None
    ended_at: datetime | None = None
    decision: str | None = None
    reason: str | None = None
    figures: dict[str, Any] | None = None


class RolloutRecord(BaseModel):
    id: str
    model: str
    pipeline_id: str | None
    strategy: Strategy
    champion: str
    candidate: str
    policy: RolloutPolicy
    state: RolloutState = RolloutState.RUNNING
    reason: str | None = None
    started_at: datetime
    finished_at: datetime | None = None
    step: int = 0
    steps: list[Step]
    decisions: list[Decision] = Field(default_factory=list)
    baseline: Counters = Field(default_factory=dict, exclude=True)
    """The replicas' counters when the current step started (kept for a resumed driver)."""

    @property
    def running(self) -> bool:
        return self.state is RolloutState.RUNNING


# --- policies ------------------------------------------------------------------------------


def get_policy(sessions: sessionmaker[Session], model: str) -> RolloutPolicy:
    """The model's policy; `immediate` when none was set."""
    with session_scope(sessions) as session:
        row = session.get(PolicyRow, model)
        return RolloutPolicy.model_validate(row.policy) if row else DEFAULT_POLICY


def put_policy(sessions: sessionmaker[Session], model: str, policy: RolloutPolicy) -> None:
    with session_scope(sessions) as session:
        row = session.get(PolicyRow, model)
        if row is None:
            session.add(PolicyRow(model_name=model, policy=policy.model_dump(mode="json")))
        else:
            row.policy = policy.model_dump(mode="json")
            row.updated_at = utcnow()


# --- rollout records -----------------------------------------------------------------------


def save(sessions: sessionmaker[Session], record: RolloutRecord) -> None:
    baseline = {
        replica: {version: asdict(stats) for version, stats in versions.items()}
        for replica, versions in record.baseline.items()
    }
    raw = {**record.model_dump(mode="json"), "baseline": baseline}
    with session_scope(sessions) as session:
        row = session.get(RolloutRow, record.id)
        if row is None:
            session.add(
                RolloutRow(
                    id=record.id,
                    model_name=record.model,
                    pipeline_id=record.pipeline_id,
                    champion=record.champion,
                    candidate=record.candidate,
                    state=record.state.value,
                    record=raw,
                    started_at=record.started_at,
                )
            )
        else:
            row.state = record.state.value
            row.record = raw


def _record(row: RolloutRow) -> RolloutRecord:
    fields = {k: v for k, v in row.record.items() if k != "baseline"}
    record = RolloutRecord.model_validate(fields)
    record.baseline = {
        replica: {version: VersionStats(**stats) for version, stats in versions.items()}
        for replica, versions in row.record.get("baseline", {}).items()
    }
    return record


def get(sessions: sessionmaker[Session], rollout_id: str) -> RolloutRecord | None:
    with session_scope(sessions) as session:
        row = session.get(RolloutRow, rollout_id)
        return _record(row) if row else None


def current(sessions: sessionmaker[Session], model: str) -> RolloutRecord | None:
    """The model's running rollout, if any."""
    with session_scope(sessions) as session:
        row = session.scalars(
            select(RolloutRow)
            .where(RolloutRow.model_name == model, RolloutRow.state == RolloutState.RUNNING)
            .order_by(RolloutRow.started_at.desc())
            .limit(1)
        ).first()
        return _record(row) if row else None


def of_pipeline(sessions: sessionmaker[Session], pipeline_id: str) -> RolloutRecord | None:
    with session_scope(sessions) as session:
        row = session.scalars(
            select(RolloutRow)
            .where(RolloutRow.pipeline_id == pipeline_id)
            .order_by(RolloutRow.started_at.desc())
            .limit(1)
        ).first()
        return _record(row) if row else None


def of_pipelines(sessions: sessionmaker[Session], pipeline_ids: list[str]) -> dict[str, RolloutRow]:
    """The latest rollout row of each pipeline that has one (for pipeline listings)."""
    if not pipeline_ids:
        return {}
    with session_scope(sessions) as session:
        rows = session.scalars(
            select(RolloutRow)
            .where(RolloutRow.pipeline_id.in_(pipeline_ids))
            .order_by(RolloutRow.started_at)
        ).all()
        return {row.pipeline_id: row for row in rows if row.pipeline_id}


def history(sessions: sessionmaker[Session], model: str, limit: int = 50) -> list[RolloutRecord]:
    """The model's rollouts, newest first."""
    with session_scope(sessions) as session:
        rows = session.scalars(
            select(RolloutRow)
            .where(RolloutRow.model_name == model)
            .order_by(RolloutRow.started_at.desc())
            .limit(limit)
        ).all()
        return [_record(row) for row in rows]


# --- aliases -------------------------------------------------------------------------------

ALIASES_PENDING_KEY = "mlops:aliases:pending"
"""Hash: model -> JSON of the aliases MLflow must be brought to (latest wins)."""
ALIASES_CHANGED_CHANNEL = "mlops:aliases:changed"


async def move_aliases(
    sessions: sessionmaker[Session],
    redis: Redis,
    model: str,
    moves: dict[str, str | None],
    reason: str,
    pipeline_id: str | None,
) -> None:
    """Record alias moves in the history and leave them for the worker to tell MLflow
    (`pipeline_worker.alias_sync`), which retries while MLflow is away.

    `moves` maps an alias to its version, or to None to remove it."""
    await asyncio.to_thread(record_alias_events, sessions, model, moves, reason, pipeline_id)
    at = utcnow().isoformat()
    tags = [
        {"alias": alias, "version": version, "reason": reason, "pipeline_id": pipeline_id, "at": at}
        for alias, version in moves.items()
        if version is not None
    ]
    # NOTE: a script, so two movers (the gateway and a driver) never lose each other's moves.
    await redis.eval(  # type: ignore[misc]  # redis-py#2399
        _MERGE_PENDING, 1, ALIASES_PENDING_KEY, model, json.dumps(moves), json.dumps(tags)
    )
    await redis.publish(ALIASES_CHANGED_CHANNEL, model)


_MERGE_PENDING = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local pending = {aliases = {}, tags = {}}
if raw then pending = cjson.decode(raw) end
for alias, version in pairs(cjson.decode(ARGV[2])) do pending.aliases[alias] = version end
for _, tag in ipairs(cjson.decode(ARGV[3])) do table.insert(pending.tags, tag) end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(pending))
"""


def record_alias_events(
    sessions: sessionmaker[Session],
    model: str,
    moves: dict[str, str | None],
    reason: str,
    pipeline_id: str | None,
) -> None:
    with session_scope(sessions) as session:
        for alias, version in moves.items():
            session.add(
                AliasEvent(
                    model_name=model,
                    alias=alias,
                    version=version,
                    reason=reason,
                    pipeline_id=pipeline_id,
                )
            )


def alias_history(
    sessions: sessionmaker[Session], model: str, limit: int = 200
) -> list[AliasEvent]:
    """Alias moves of a model, newest first."""
    with session_scope(sessions) as session:
        return list(
            session.scalars(
                select(AliasEvent)
                .where(AliasEvent.model_name == model)
                .order_by(AliasEvent.id.desc())
                .limit(limit)
            ).all()
        )


# --- talking to the driver -----------------------------------------------------------------


def _command_key(rollout_id: str) -> str:
    # NOTE: by rollout, not by model: a command left for a rollout that ended meanwhile must
    # never reach the model's next one.
    return f"mlops:rollout:{rollout_id}:command"


def _live_key(model: str) -> str:
    return f"mlops:rollout:{model}:live"


class Command(StrEnum):
    PROMOTE = "promote"
    ABORT = "abort"


async def leave_command(redis: Redis, rollout_id: str, command: Command, reason: str) -> None:
    """Ask the driver of the rollout to promote or abort it at its next tick."""
    await redis.set(
        _command_key(rollout_id), json.dumps({"command": command.value, "reason": reason}), ex=3600
    )


async def take_command(redis: Redis, rollout_id: str) -> tuple[Command, str] | None:
    raw = await redis.getdel(_command_key(rollout_id))
    if raw is None:
        return None
    entry = json.loads(raw)
    return Command(entry["command"]), str(entry["reason"])


async def publish_live(redis: Redis, model: str, figures: dict[str, Any], ttl_s: float) -> None:
    """The current step's figures as of the driver's last tick."""
    await redis.set(_live_key(model), json.dumps(figures), px=int(ttl_s * 1000))


async def live_figures(redis: Redis, model: str) -> dict[str, Any] | None:
    raw = await redis.get(_live_key(model))
    return json.loads(raw) if raw else None
