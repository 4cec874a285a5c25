"""Progressive delivery: a model's rollout policy, its rollouts and their decisions, promote
and abort by hand, and the history of its MLflow aliases."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from gateway.deps import Resources, ResourcesDep
from gateway.schemas import AliasEventOut, ModelHistory, RolloutOut, error_responses
from mlops_core import rollouts
from mlops_core.errors import NotFound
from mlops_core.rollout_policy import RolloutPolicy
from mlops_core.rollouts import Command, RolloutRecord

router = APIRouter(prefix="/models", tags=["rollouts"])

ModelName = Annotated[
    str, Path(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
NO_ROLLOUT = (404, "model 'iris-classifier' has no rollout running")
COMMAND_WAIT_S = 10.0
"""How long promote and abort wait for the rollout's driver to act before answering 202."""


class NoRollout(NotFound):
    pass


@router.get("/{name}/policy", response_model=RolloutPolicy)
async def get_policy(name: ModelName, resources: ResourcesDep) -> RolloutPolicy:
    """How a new version of the model reaches its callers (`immediate` unless set)."""
    return await asyncio.to_thread(rollouts.get_policy, resources.sessions, name)


@router.put(
    "/{name}/policy",
    response_model=RolloutPolicy,
    responses=error_responses((422, "steps.0: Input should be less than or equal to 99")),
)
async def put_policy(
    name: ModelName, policy: RolloutPolicy, resources: ResourcesDep
) -> RolloutPolicy:
    """Set the model's rollout policy; the next pipeline of the model follows it (a notebook's
    own `ROLLOUT = {...}` in its `mlops:config` cell wins for its pipeline)."""
    await asyncio.to_thread(rollouts.put_policy, resources.sessions, name, policy)
    return policy


@router.get("/{name}/rollouts", response_model=list[RolloutOut])
async def list_rollouts(name: ModelName, resources: ResourcesDep) -> list[RolloutOut]:
    """The model's rollouts, newest first, each with every decision and its figures."""
    records = await asyncio.to_thread(rollouts.history, resources.sessions, name)
    return [RolloutOut.model_validate(r.model_dump()) for r in records]


@router.get(
    "/{name}/rollouts/current", response_model=RolloutOut, responses=error_responses(NO_ROLLOUT)
)
async def current_rollout(name: ModelName, resources: ResourcesDep) -> RolloutOut:
    """The running rollout, with the current step's figures as of the last judgement."""
    record = await _running(resources, name)
    return await _out(resources, record)


@router.post(
    "/{name}/rollouts/current/promote",
    response_model=RolloutOut,
    responses={
        202: {"model": RolloutOut, "description": "Asked; its driver has not acted yet"},
        **error_responses(NO_ROLLOUT),
    },
)
async def promote(name: ModelName, resources: ResourcesDep, response: Response) -> RolloutOut:
    """Promote the candidate now, whatever its figures say."""
    return await _command(resources, name, Command.PROMOTE, "promoted by hand", response)


@router.post(
    "/{name}/rollouts/current/abort",
    response_model=RolloutOut,
    responses={
        202: {"model": RolloutOut, "description": "Asked; its driver has not acted yet"},
        **error_responses(NO_ROLLOUT),
    },
)
async def abort(name: ModelName, resources: ResourcesDep, response: Response) -> RolloutOut:
    """Take the candidate away now; the champion serves every request."""
    return await _command(resources, name, Command.ABORT, "aborted by hand", response)


@router.get("/{name}/history", response_model=ModelHistory)
async def history(name: ModelName, resources: ResourcesDep) -> ModelHistory:
    """Every move of the model's `champion` and `challenger` aliases, newest first."""
    events = await asyncio.to_thread(rollouts.alias_history, resources.sessions, name)
    return ModelHistory(
        model=name,
        events=[
            AliasEventOut(
                alias=e.alias,
                version=e.version,
                reason=e.reason,
                pipeline_id=e.pipeline_id,
                at=e.at,
            )
            for e in events
        ],
    )


async def _running(resources: Resources, name: str) -> RolloutRecord:
    record = await asyncio.to_thread(rollouts.current, resources.sessions, name)
    if record is None:
        raise NoRollout(f"model {name!r} has no rollout running")
    return record


async def _out(resources: Resources, record: RolloutRecord) -> RolloutOut:
    live = await rollouts.live_figures(resources.redis, record.model) if record.running else None
    return RolloutOut.model_validate({**record.model_dump(), "live": live})


async def _command(
    resources: Resources, name: str, command: Command, reason: str, response: Response
) -> RolloutOut:
    record = await _running(resources, name)
    await rollouts.leave_command(resources.redis, record.id, command, reason)
    deadline = time.monotonic() + COMMAND_WAIT_S
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        now = await asyncio.to_thread(rollouts.get, resources.sessions, record.id)
        if now is not None and not now.running:
            return await _out(resources, now)
    response.status_code = status.HTTP_202_ACCEPTED
    return await _out(resources, record)
