"""Judging one rollout step from the figures replicas report in their heartbeats.

Pure functions: the counters every replica keeps per version (`fleet_state.VersionStats`)
are read at a step's start and again on each tick; their difference is the step's traffic.
Too little traffic is a hold, never a rollback (a metric with no data proves nothing); a
threshold crossed is a rollback at once; a step that lasted its interval with enough traffic
advances, and the last one promotes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from mlops_core.fleet_state import LATENCY_BUCKETS_S, ReplicaReport, VersionStats
from mlops_core.rollout_policy import RolloutPolicy, Strategy

MIN_COMPARED = 20
"""Compared answers needed before agreement is judged (a share of five says little)."""

Counters = dict[str, dict[str, VersionStats]]
"""Replica id -> version -> the replica's counters for one model."""


def counters(replicas: list[ReplicaReport], model: str) -> Counters:
    return {r.replica_id: dict(r.models[model].stats) for r in replicas if model in r.models}


@dataclass(frozen=True)
class Side:
    """One version's traffic in a step."""

    version: str
    requests: int
    errors: int
    p99_ms: float | None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass(frozen=True)
class StepFigures:
    champion: Side
    candidate: Side
    compared: int
    agreed: int

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "champion": {**asdict(self.champion), "error_rate": self.champion.error_rate},
            "candidate": {**asdict(self.candidate), "error_rate": self.candidate.error_rate},
            "agreement": {
                "compared": self.compared,
                "agreed": self.agreed,
                "share": self.agreement,
            },
        }


def step_figures(
    baseline: Counters, now: Counters, champion: str, candidate: str, *, shadow: bool
) -> StepFigures:
    """The traffic since `baseline`, summed over replicas. A replica that restarted since (its
    counters went down) counts from zero; one that appeared counts whole."""
    champ = CounterTotal()
    cand = CounterTotal()
    compared = agreed = 0
    for replica, versions in now.items():
        before = baseline.get(replica, {})
        a = _delta(versions.get(champion), before.get(champion))
        c = _delta(versions.get(candidate), before.get(candidate))
        champ.add(a.requests, a.errors, a.latency)
        if shadow:
            cand.add(c.mirrored, c.mirror_errors, c.mirror_latency)
        else:
            cand.add(c.requests, c.errors, c.latency)
        compared += c.compared
        agreed += c.agreed
    return StepFigures(
        champion=champ.side(champion),
        candidate=cand.side(candidate),
        compared=compared,
        agreed=agreed,
    )


class Action(StrEnum):
    WAIT = "wait"
    """Nothing to decide yet (the step's interval has not passed, nothing crossed)."""
    HOLD = "hold"
    ADVANCE = "advance"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    ABORT = "abort"


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str


def judge(
    policy: RolloutPolicy, figures: StepFigures, elapsed_s: float, *, last_step: bool
) -> Verdict:
    """What to do with the current step, given its figures and how long it has run."""
    cand, champ = figures.candidate, figures.champion
    answered = "mirrored requests" if policy.strategy is Strategy.SHADOW else "requests"
    if cand.requests >= policy.min_requests:
        crossed = _crossed(policy, figures, answered)
        if crossed:
            return Verdict(Action.ROLLBACK, crossed)
    short = ""
    if cand.requests < policy.min_requests:
        short = (
            f"too little traffic: the candidate answered {cand.requests} {answered} of the "
            f"{policy.min_requests} a step needs"
        )
    elif policy.min_agreement is not None and figures.compared < MIN_COMPARED:
        short = (
            f"too few compared answers: {figures.compared} of the {MIN_COMPARED} agreement needs"
        )
    if short and elapsed_s >= policy.max_hold_s:
        return Verdict(Action.ABORT, f"held {elapsed_s:.0f}s (max_hold_s) with {short}")
    if elapsed_s < policy.step_interval_s:
        return Verdict(Action.WAIT, "")
    if short:
        return Verdict(Action.HOLD, short)
    summary = (
        f"{cand.requests} {answered}, error rate {_pct(cand.error_rate)}, p99 "
        f"{_ms(cand.p99_ms)} against the champion's {_ms(champ.p99_ms)}"
    )
    if figures.agreement is not None:
        summary += f", agreement {_pct(figures.agreement)} of {figures.compared}"
    if last_step:
        return Verdict(Action.PROMOTE, f"every step passed: {summary}")
    return Verdict(Action.ADVANCE, f"step passed: {summary}")


def _crossed(policy: RolloutPolicy, figures: StepFigures, answered: str) -> str:
    cand, champ = figures.candidate, figures.champion
    rate = cand.error_rate or 0.0
    if rate > policy.max_error_rate:
        return (
            f"error rate {_pct(rate)} ({cand.errors} of {cand.requests} {answered}) above "
            f"max_error_rate {_pct(policy.max_error_rate)}"
        )
    # NOTE: latency is compared only when both sides have enough requests to have a p99.
    if (
        champ.requests >= policy.min_requests
        and cand.p99_ms is not None
        and champ.p99_ms
        and cand.p99_ms / champ.p99_ms > policy.max_p99_ratio
    ):
        return (
            f"p99 {_ms(cand.p99_ms)} is {cand.p99_ms / champ.p99_ms:.2f}x the champion's "
            f"{_ms(champ.p99_ms)}, above max_p99_ratio {policy.max_p99_ratio}"
        )
    share = figures.agreement
    if (
        policy.min_agreement is not None
        and figures.compared >= MIN_COMPARED
        and share is not None
        and share < policy.min_agreement
    ):
        return (
            f"agreement {_pct(share)} ({figures.agreed} of {figures.compared} compared answers) "
            f"below min_agreement {_pct(policy.min_agreement)}"
        )
    return ""


def percentile_ms(buckets: list[int], quantile: float) -> float | None:
    """The quantile of bucketed latencies, interpolated within its bucket; None without data."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = quantile * total
    seen = 0
    for index, count in enumerate(buckets):
        if count and seen + count >= rank:
            upper = LATENCY_BUCKETS_S[min(index, len(LATENCY_BUCKETS_S) - 1)]
            lower = LATENCY_BUCKETS_S[index - 1] if 0 < index <= len(LATENCY_BUCKETS_S) else 0.0
            if index >= len(LATENCY_BUCKETS_S):  # slower than the last bound: say that bound
                return upper * 1000
            return (lower + (upper - lower) * (rank - seen) / count) * 1000
        seen += count
    return LATENCY_BUCKETS_S[-1] * 1000


class CounterTotal:
    """Requests, errors and latency buckets added up over replicas (or versions)."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latency = [0] * (len(LATENCY_BUCKETS_S) + 1)

    def add(self, requests: int, errors: int, latency: list[int]) -> None:
        self.requests += requests
        self.errors += errors
        for index, count in enumerate(latency[: len(self.latency)]):
            self.latency[index] += count

    def side(self, version: str) -> Side:
        p99 = percentile_ms(self.latency, 0.99)
        return Side(version, self.requests, self.errors, None if p99 is None else round(p99, 3))


def _delta(now: VersionStats | None, before: VersionStats | None) -> VersionStats:
    if now is None:
        return VersionStats()
    if before is None or now.requests < before.requests or now.mirrored < before.mirrored:
        return now
    return VersionStats(
        requests=now.requests - before.requests,
        errors=max(now.errors - before.errors, 0),
        latency=_minus(now.latency, before.latency),
        mirrored=now.mirrored - before.mirrored,
        mirror_errors=max(now.mirror_errors - before.mirror_errors, 0),
        mirror_latency=_minus(now.mirror_latency, before.mirror_latency),
        compared=max(now.compared - before.compared, 0),
        agreed=max(now.agreed - before.agreed, 0),
    )


def _minus(now: list[int], before: list[int]) -> list[int]:
    return [max(n - (before[i] if i < len(before) else 0), 0) for i, n in enumerate(now)]


def _pct(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value * 100:.1f}%"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"
