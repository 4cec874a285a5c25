"""Driving a canary or shadow rollout: start it on the fleet, judge each step, and end it by
promotion, rollback or abort, writing every decision to the rollout's record and the
pipeline's log.

The worker running the pipeline drives its rollout; the record (database) holds the step and
the baseline counters, so a pipeline resumed on another worker resumes the rollout where it
was. The gateway's promote, abort and rollback reach the driver as a command in Redis.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeGuard

from redis.asyncio import Redis
from sqlalchemy.orm import Session, sessionmaker

from mlops_core import fleet_state, rollouts
from mlops_core.db import PipelineStatus, utcnow
from mlops_core.errors import PipelineError, RolloutTimeout
from mlops_core.fleet_state import CandidateRoute, DesiredModel
from mlops_core.rollout_analysis import Action, counters, judge, step_figures
from mlops_core.rollout_policy import RolloutPolicy, Strategy
from mlops_core.rollouts import (
    CHALLENGER,
    CHAMPION,
    Command,
    Decision,
    RolloutRecord,
    RolloutState,
    Step,
)
from mlops_core.settings import Settings
from pipeline_worker.cancellation import PipelineCancelled

logger = logging.getLogger(__name__)

STAGE = PipelineStatus.DEPLOYING
LogFn = Callable[[str], Awaitable[None]]
Cancelled = Callable[[], Awaitable[bool]]


class RolloutRun:
    """What a driver needs: where the records and the fleet are, and the pipeline's log."""

    def __init__(
        self,
        redis: Redis,
        sessions: sessionmaker[Session],
        settings: Settings,
        log: LogFn,
        cancelled: Cancelled,
    ) -> None:
        self.redis = redis
        self.sessions = sessions
        self.settings = settings
        self.log = log
        self.cancelled = cancelled

    async def save(self, record: RolloutRecord) -> None:
        await asyncio.to_thread(rollouts.save, self.sessions, record)

    async def aliases(
        self, record: RolloutRecord, moves: dict[str, str | None], reason: str
    ) -> None:
        await rollouts.move_aliases(
            self.sessions, self.redis, record.model, moves, reason, record.pipeline_id
        )


def route_of(record: RolloutRecord, settings: Settings) -> CandidateRoute:
    weight = record.steps[record.step].weight
    shadow = record.strategy is Strategy.SHADOW
    return CandidateRoute(
        version=record.candidate,
        weight=weight,
        mirror_rate=settings.shadow_rate if shadow else settings.mirror_rate,
        agreement_rtol=record.policy.agreement_rtol,
    )


async def start(
    run: RolloutRun,
    model: str,
    version: str,
    champion: DesiredModel,
    policy: RolloutPolicy,
    pipeline_id: str | None,
) -> RolloutRecord:
    """Put `version` beside the champion at the policy's first step, once every replica has
    loaded it and routes to it; a running rollout of the model is aborted first (superseded)."""
    await supersede(run, model, f"superseded by version {version}")
    record = RolloutRecord(
        id=str(uuid.uuid4()),
        model=model,
        pipeline_id=pipeline_id,
        strategy=policy.strategy,
        champion=champion.active,
        candidate=version,
        policy=policy,
        started_at=utcnow(),
        steps=[Step(weight=w) for w in policy.weights()],
    )
    route = route_of(record, run.settings)

    def with_candidate(current: DesiredModel | None) -> DesiredModel:
        base = current or champion
        warm = [v for v in base.warm if v != version]
        return DesiredModel(active=base.active, warm=warm, candidate=route)

    desired = await fleet_state.update_desired(run.redis, model, with_candidate)
    assert desired is not None
    record.champion = desired.active
    try:
        replicas = await fleet_state.wait_for_route(
            run.redis, model, desired.active, route, run.settings.deploy_timeout_s
        )
    except (RolloutTimeout, asyncio.CancelledError) as exc:
        await _drop_candidate(run, model, version)
        if isinstance(exc, RolloutTimeout):
            raise PipelineError(
                STAGE, f"{exc.message}; version {desired.active} stays active"
            ) from None
        raise
    record.baseline = counters(replicas, model)
    record.steps[0].started_at = utcnow()
    await run.save(record)
    await run.aliases(record, {CHALLENGER: version}, f"{policy.strategy} rollout started")
    await run.log(
        f"{policy.strategy} rollout of version {version} beside champion {record.champion}: "
        f"{_plan(record, run.settings)}"
    )
    return record


async def supersede(run: RolloutRun, model: str, reason: str) -> None:
    """End the model's running rollout, if any, before another starts. The record ends here,
    so its driver stops at its next tick, and one that is gone (its worker died) cannot resume
    it."""
    running = await asyncio.to_thread(rollouts.current, run.sessions, model)
    if running is None:
        return
    await _end(run, running, RolloutState.ABORTED, reason)


async def drive(run: RolloutRun, record: RolloutRecord) -> RolloutRecord:
    """Judge the rollout on every tick until it ends; returns its final record."""
    settings = run.settings
    shadow = record.strategy is Strategy.SHADOW
    held_logged = -1
    while True:
        await asyncio.sleep(settings.rollout_tick_s)
        stored = await asyncio.to_thread(rollouts.get, run.sessions, record.id)
        if stored is not None and not stored.running:
            # NOTE: ended elsewhere (superseded by a newer pipeline while this one was away).
            await run.log(f"rollout {stored.state.value}: {stored.reason}")
            return stored
        command = await rollouts.take_command(run.redis, record.id)
        if command is not None:
            action, reason = command
            if action is Command.PROMOTE:
                return await _end(run, record, RolloutState.PROMOTED, reason)
            return await _end(run, record, RolloutState.ABORTED, reason)
        if await run.cancelled():
            await _end(run, record, RolloutState.ABORTED, "the pipeline was cancelled")
            raise PipelineCancelled()
        if (utcnow() - record.started_at).total_seconds() > settings.rollout_max_s:
            return await _end(
                run,
                record,
                RolloutState.ABORTED,
                f"the rollout ran past MLOPS_ROLLOUT_MAX_S ({settings.rollout_max_s:.0f}s)",
            )
        replicas = await fleet_state.live_replicas(run.redis)
        figures = step_figures(
            record.baseline,
            counters(replicas, record.model),
            record.champion,
            record.candidate,
            shadow=shadow,
        )
        step = record.steps[record.step]
        assert step.started_at is not None
        elapsed = (utcnow() - step.started_at).total_seconds()
        last = record.step == len(record.steps) - 1
        verdict = judge(record.policy, figures, elapsed, last_step=last)
        shown = figures.as_dict()
        await rollouts.publish_live(
            run.redis,
            record.model,
            {"step": record.step, "elapsed_s": round(elapsed, 1), **shown},
            ttl_s=max(5.0, settings.rollout_tick_s * 5),
        )
        if verdict.action is Action.WAIT:
            continue
        if verdict.action is Action.HOLD:
            if held_logged != record.step:
                held_logged = record.step
                _decide(record, verdict.action, verdict.reason, shown)
                await run.save(record)
                await run.log(f"step {record.step + 1} holds: {verdict.reason}")
            continue
        step.ended_at, step.decision, step.reason, step.figures = (
            utcnow(),
            verdict.action.value,
            verdict.reason,
            shown,
        )
        await run.log(
            f"step {record.step + 1} at {_pct(step.weight)}: {verdict.action}: {verdict.reason}"
        )
        if verdict.action is Action.ADVANCE:
            _decide(record, verdict.action, verdict.reason, shown)
            await _next_step(run, record)
            continue
        return await _end(run, record, _ENDS[verdict.action], verdict.reason, figures=shown)


async def _next_step(run: RolloutRun, record: RolloutRecord) -> None:
    record.step += 1
    route = route_of(record, run.settings)

    def reweighted(current: DesiredModel | None) -> DesiredModel | None:
        # NOTE: a candidate taken away meanwhile (a rollback by hand) is not put back.
        return replace(current, candidate=route) if _routes(current, record.candidate) else current

    await fleet_state.update_desired(run.redis, record.model, reweighted)
    try:
        replicas = await fleet_state.wait_for_route(
            run.redis, record.model, record.champion, route, run.settings.deploy_timeout_s
        )
    except RolloutTimeout as exc:
        # NOTE: counted from now anyway: a replica that lags serves the previous weight, which
        # only makes the step's figures more careful.
        await run.log(f"step {record.step + 1}: {exc.message}")
        replicas = await fleet_state.live_replicas(run.redis)
    record.baseline = counters(replicas, record.model)
    record.steps[record.step].started_at = utcnow()
    await run.save(record)
    await run.log(f"step {record.step + 1}: {_pct(route.weight)} of requests to the candidate")


_ENDS = {
    Action.PROMOTE: RolloutState.PROMOTED,
    Action.ROLLBACK: RolloutState.ROLLED_BACK,
    Action.ABORT: RolloutState.ABORTED,
}
_ACTION_OF = {state: action for action, state in _ENDS.items()}


async def _end(
    run: RolloutRun,
    record: RolloutRecord,
    state: RolloutState,
    reason: str,
    *,
    figures: dict[str, object] | None = None,
) -> RolloutRecord:
    """Promote the candidate, or take it away; the record, the aliases and the log say so."""
    model, candidate = record.model, record.candidate
    if state is RolloutState.PROMOTED:
        keep = run.settings.keep_versions

        def promoted(current: DesiredModel | None) -> DesiredModel:
            return fleet_state.next_desired(current, candidate, keep)

        await fleet_state.update_desired(run.redis, model, promoted)
        try:
            await fleet_state.wait_for_rollout(
                run.redis, model, candidate, run.settings.deploy_timeout_s
            )
        except RolloutTimeout as exc:
            await run.log(f"promotion: {exc.message} (replicas catch up on their next resync)")
    else:
        await _drop_candidate(run, model, candidate)
    record.state, record.reason, record.finished_at = state, reason, utcnow()
    _decide(record, _ACTION_OF[state], reason, figures)
    await run.save(record)
    desired = await fleet_state.get_desired_model(run.redis, model)
    serving = desired.active if desired else record.champion
    what = f"version {candidate} {state.value.replace('_', ' ')}: {reason}"
    await run.aliases(record, {CHAMPION: serving, CHALLENGER: None}, what)
    await run.log(f"rollout ended: {what}; version {serving} serves")
    return record


async def _drop_candidate(run: RolloutRun, model: str, candidate: str) -> None:
    """The candidate gets no more requests; whatever is active (the champion, or a version a
    rollback chose meanwhile) stays."""

    def without(current: DesiredModel | None) -> DesiredModel | None:
        return replace(current, candidate=None) if _routes(current, candidate) else current

    await fleet_state.update_desired(run.redis, model, without)


def _routes(desired: DesiredModel | None, candidate: str) -> TypeGuard[DesiredModel]:
    """Whether the entry still routes to this rollout's candidate."""
    return (
        desired is not None
        and desired.candidate is not None
        and desired.candidate.version == candidate
    )


def _decide(
    record: RolloutRecord, action: str, reason: str, figures: dict[str, object] | None
) -> None:
    record.decisions.append(
        Decision(at=utcnow(), step=record.step, action=action, reason=reason, figures=figures)
    )


def _plan(record: RolloutRecord, settings: Settings) -> str:
    p = record.policy
    if record.strategy is Strategy.SHADOW:
        plan = f"a mirror of {_pct(settings.shadow_rate)} of requests, never answered"
    else:
        plan = " -> ".join(_pct(s.weight) for s in record.steps) + " -> 100%"
    agreement = "not judged" if p.min_agreement is None else f">= {_pct(p.min_agreement)}"
    return (
        f"{plan}; each step {p.step_interval_s:.0f}s and {p.min_requests} requests at least, "
        f"error rate <= {_pct(p.max_error_rate)}, p99 <= {p.max_p99_ratio}x the champion's, "
        f"agreement {agreement}, held at most {p.max_hold_s:.0f}s"
    )


def _pct(share: float) -> str:
    return f"{share * 100:g}%"


def outcome(record: RolloutRecord) -> PipelineError | None:
    """What the pipeline makes of its rollout's end: nothing when promoted."""
    if record.state is RolloutState.PROMOTED:
        return None
    return PipelineError(
        STAGE, f"version {record.candidate} {record.state.value.replace('_', ' ')}: {record.reason}"
    )
