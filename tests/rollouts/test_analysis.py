"""Judging a rollout step from replica counters, and the policy's validation."""

from __future__ import annotations

import pytest

from mlops_core.fleet_state import LATENCY_BUCKETS_S, VersionStats
from mlops_core.rollout_analysis import (
    MIN_COMPARED,
    Action,
    Side,
    StepFigures,
    judge,
    percentile_ms,
    step_figures,
)
from mlops_core.rollout_policy import PolicyError, RolloutPolicy, parse_policy

POLICY = RolloutPolicy(
    strategy="canary",
    steps=[10, 50],
    step_interval_s=10,
    min_requests=100,
    max_error_rate=0.05,
    max_p99_ratio=2.0,
    min_agreement=0.9,
    max_hold_s=30,
)


def figures(
    n: int, errors: int = 0, p99: float | None = 1.0, champ_p99: float | None = 1.0,
    compared: int = 50, agreed: int = 50, champ_n: int = 1000,
) -> StepFigures:  # fmt: skip
    return StepFigures(
        champion=Side("1", champ_n, 0, champ_p99),
        candidate=Side("2", n, errors, p99),
        compared=compared,
        agreed=agreed,
    )


def test_a_step_waits_for_its_interval() -> None:
    assert judge(POLICY, figures(500), 5, last_step=False).action is Action.WAIT


def test_too_little_traffic_holds_then_aborts_at_max_hold() -> None:
    held = judge(POLICY, figures(40), 12, last_step=False)
    assert held.action is Action.HOLD and "40 requests of the 100" in held.reason
    aborted = judge(POLICY, figures(40), 31, last_step=False)
    assert aborted.action is Action.ABORT and "max_hold_s" in aborted.reason


def test_no_data_is_never_a_rollback() -> None:
    verdict = judge(POLICY, figures(0, p99=None, compared=0, agreed=0), 12, last_step=True)
    assert verdict.action is Action.HOLD


def test_errors_roll_back_before_the_interval_ends() -> None:
    verdict = judge(POLICY, figures(100, errors=10), 1, last_step=False)
    assert verdict.action is Action.ROLLBACK
    assert "error rate 10.0% (10 of 100 requests) above max_error_rate 5.0%" in verdict.reason


def test_a_slow_candidate_rolls_back_only_when_the_champion_has_a_p99() -> None:
    slow = judge(POLICY, figures(200, p99=5.0, champ_p99=1.0), 1, last_step=False)
    assert slow.action is Action.ROLLBACK and "max_p99_ratio" in slow.reason
    unknown = judge(POLICY, figures(200, p99=5.0, champ_p99=1.0, champ_n=10), 1, last_step=False)
    assert unknown.action is Action.WAIT


def test_disagreement_rolls_back_once_enough_answers_were_compared() -> None:
    verdict = judge(POLICY, figures(200, compared=40, agreed=20), 1, last_step=False)
    assert verdict.action is Action.ROLLBACK and "agreement 50.0%" in verdict.reason
    few = judge(POLICY, figures(200, compared=MIN_COMPARED - 1, agreed=0), 12, last_step=False)
    assert few.action is Action.HOLD and "compared" in few.reason


def test_a_good_step_advances_and_the_last_promotes() -> None:
    assert judge(POLICY, figures(200), 10, last_step=False).action is Action.ADVANCE
    promoted = judge(POLICY, figures(200), 10, last_step=True)
    assert promoted.action is Action.PROMOTE and "200 requests" in promoted.reason


def test_agreement_is_not_needed_when_the_policy_does_not_judge_it() -> None:
    policy = POLICY.model_copy(update={"min_agreement": None})
    verdict = judge(policy, figures(200, compared=0, agreed=0), 10, last_step=True)
    assert verdict.action is Action.PROMOTE


def buckets(**at_ms: int) -> list[int]:
    counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
    for key, count in at_ms.items():
        bound = float(key[1:].replace("_", ".")) / 1000
        counts[LATENCY_BUCKETS_S.index(bound)] += count
    return counts


def test_step_figures_are_the_traffic_since_the_baseline() -> None:
    before = {"r1": {"1": VersionStats(requests=100, latency=buckets(b0_2=100))}}
    now = {
        "r1": {
            "1": VersionStats(requests=300, errors=2, latency=buckets(b0_2=300)),
            "2": VersionStats(requests=50, errors=5, latency=buckets(b1=50), compared=10, agreed=9),
        },
        # A replica that restarted since the baseline counts from zero.
        "r2": {"1": VersionStats(requests=20, latency=buckets(b0_2=20))},
    }
    before["r2"] = {"1": VersionStats(requests=500)}
    got = step_figures(before, now, "1", "2", shadow=False)
    assert (got.champion.requests, got.champion.errors) == (220, 2)
    assert (got.candidate.requests, got.candidate.errors) == (50, 5)
    assert (got.compared, got.agreed) == (10, 9)
    assert got.candidate.p99_ms is not None and 0.75 < got.candidate.p99_ms <= 1.0


def test_shadow_figures_are_the_mirrored_calls() -> None:
    now = {"r1": {"2": VersionStats(mirrored=80, mirror_errors=4, mirror_latency=buckets(b2=80))}}
    got = step_figures({}, now, "1", "2", shadow=True)
    assert (got.candidate.requests, got.candidate.errors) == (80, 4)


def test_percentiles_interpolate_within_a_bucket() -> None:
    assert percentile_ms([0] * (len(LATENCY_BUCKETS_S) + 1), 0.99) is None
    counts = buckets(b1=100)
    assert 0.75 < (percentile_ms(counts, 0.99) or 0) <= 1.0
    slow = [0] * len(LATENCY_BUCKETS_S) + [10]
    assert percentile_ms(slow, 0.99) == LATENCY_BUCKETS_S[-1] * 1000


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"steps": [50, 10]}, "steps must increase"),
        ({"steps": [10, 100]}, "steps.1"),
        ({"max_error_rate": 2}, "max_error_rate"),
        ({"strategy": "blue-green"}, "strategy"),
        ({"step_interval_s": 60, "max_hold_s": 30}, "max_hold_s"),
        ({"max_p99": 2}, "max_p99"),
    ],
)
def test_bad_policies_are_refused_naming_the_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(PolicyError, match=field):
        parse_policy(raw)


def test_shadow_is_one_step_at_weight_zero() -> None:
    assert parse_policy({"strategy": "shadow"}).weights() == [0.0]
    assert parse_policy({"strategy": "canary", "steps": [5, 25, 60]}).weights() == [
        0.05,
        0.25,
        0.6,
    ]


async def test_a_command_reaches_only_the_rollout_it_was_left_for(redis_url: str) -> None:
    from redis.asyncio import Redis

    from mlops_core.rollouts import Command, leave_command, take_command
    from tests.conftest import new_redis_db

    redis = Redis.from_url(new_redis_db(redis_url))
    try:
        await leave_command(redis, "rollout-a", Command.ABORT, "aborted by hand")
        assert await take_command(redis, "rollout-b") is None
        assert await take_command(redis, "rollout-a") == (Command.ABORT, "aborted by hand")
        assert await take_command(redis, "rollout-a") is None
    finally:
        await redis.aclose()
