"""A model's rollout policy: how a new version reaches its callers, and when it is judged.

One definition serves `PUT /models/{name}/policy` (422 naming the field) and a notebook's
`ROLLOUT = {...}` literal (the validate stage fails naming the field), so both accept exactly
the same values.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Strategy(StrEnum):
    IMMEDIATE = "immediate"
    """Every request goes to the new version as soon as every replica has it (no analysis)."""
    CANARY = "canary"
    """A growing share of requests goes to the new version, step by step, judged at each."""
    SHADOW = "shadow"
    """The new version answers a sampled mirror of requests that callers never see; judged
    once, then promoted or refused."""


Percent = Annotated[int, Field(ge=1, le=99)]


class RolloutPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Strategy = Strategy.IMMEDIATE
    steps: list[Percent] = Field(
        default_factory=lambda: [10, 50],
        description="Canary traffic percentages, increasing; 100 % (promotion) follows the last.",
    )
    step_interval_s: float = Field(
        60.0, gt=0, le=86_400, description="Time a step lasts before it can advance."
    )
    min_requests: int = Field(
        100, ge=1, description="Requests the candidate must answer in a step before it is judged."
    )
    max_error_rate: float = Field(
        0.01, ge=0, le=1, description="Share of the candidate's requests that may fail."
    )
    max_p99_ratio: float = Field(
        1.5, gt=0, description="Candidate p99 latency over the champion's, at most."
    )
    min_agreement: float | None = Field(
        0.95,
        ge=0,
        le=1,
        description="Share of compared requests whose answers must agree with the champion's "
        "(same label; numbers within agreement_rtol); null to not judge agreement.",
    )
    agreement_rtol: float = Field(
        0.01, ge=0, le=1, description="Relative tolerance under which two numbers agree."
    )
    max_hold_s: float = Field(
        600.0,
        gt=0,
        le=7 * 86_400,
        description="A step with too little traffic holds; past this it is aborted.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> RolloutPolicy:
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError("steps must increase (e.g. [10, 50])")
        if self.max_hold_s < self.step_interval_s:
            raise ValueError("max_hold_s must be at least step_interval_s")
        return self

    def weights(self) -> list[float]:
        """The candidate's share of unpinned requests at each step (shadow: one step at 0)."""
        if self.strategy is Strategy.SHADOW:
            return [0.0]
        return [p / 100 for p in self.steps]

    @property
    def progressive(self) -> bool:
        return self.strategy is not Strategy.IMMEDIATE


DEFAULT_POLICY = RolloutPolicy()


class PolicyError(ValueError):
    """A policy's values are wrong; the message names every field at fault."""


def parse_policy(raw: Any) -> RolloutPolicy:
    try:
        return RolloutPolicy.model_validate(raw)
    except ValidationError as exc:
        raise PolicyError(policy_problems(exc)) from None


def policy_problems(exc: ValidationError) -> str:
    # NOTE: without the submitted values: they are the caller's and may be large.
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'policy'}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    )
