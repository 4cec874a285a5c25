"""Deploy stage: make the new version the fleet's desired version and wait for every replica.

On a timeout the previous desired state is put back, so the version serving before keeps
serving; the earlier versions stay warm so a rollback is instant.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from mlops_core import fleet_state
from mlops_core.db import PipelineStatus
from mlops_core.errors import PipelineError, RolloutTimeout
from mlops_core.fleet_state import DesiredModel, ReplicaReport

STAGE = PipelineStatus.DEPLOYING
LogFn = Callable[[str], Awaitable[None]]


async def deploy(
    redis: Redis,
    model: str,
    version: str,
    *,
    timeout_s: float,
    keep_versions: int,
    log: LogFn,
) -> list[ReplicaReport]:
    previous = await fleet_state.get_desired_model(redis, model)
    desired = fleet_state.next_desired(previous, version, keep_versions)
    await fleet_state.set_desired(redis, model, desired)
    await log(f"desired state of {model}: active {desired.active}, warm {desired.warm}")
    try:
        replicas = await fleet_state.wait_for_rollout(redis, model, version, timeout_s)
    except RolloutTimeout as exc:
        await _restore(redis, model, desired, previous)
        kept = f"version {previous.active} stays active" if previous else "nothing was serving it"
        raise PipelineError(STAGE, f"{exc.message}; {kept}") from None
    except BaseException:
        await _restore(redis, model, desired, previous)
        raise
    await log(f"version {version} active on {', '.join(r.replica_id for r in replicas)}")
    return replicas


async def _restore(
    redis: Redis, model: str, ours: DesiredModel, previous: DesiredModel | None
) -> None:
    # NOTE: only undo our own change; a rollback made meanwhile through the gateway wins.
    if await fleet_state.get_desired_model(redis, model) != ours:
        return
    if previous is None:
        await fleet_state.remove_desired(redis, model)
    else:
        await fleet_state.set_desired(redis, model, previous)
