"""Bring MLflow's aliases (`champion`, `challenger`) to what the platform decided.

Decisions are made where they happen (a rollout's driver, the gateway's rollback) and left in
Redis (`rollouts.ALIASES_PENDING_KEY`); every worker runs this loop, which tells MLflow and
forgets an entry only if nobody changed it meanwhile. So a decision never waits for MLflow,
and an MLflow that is away gets the aliases when it returns.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from redis.asyncio import Redis
from redis.exceptions import RedisError

from mlops_core.rollouts import ALIASES_PENDING_KEY

logger = logging.getLogger(__name__)

INTERVAL_S = 1.0
MAX_TAG_CHARS = 4000

_FORGET_IF_UNCHANGED = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


def apply(client: MlflowClient, model: str, pending: dict[str, Any]) -> None:
    """Set or remove each alias, then tag each version an alias moved to (why, when, which
    pipeline). Raises what MLflow raised; an entry naming what MLflow does not know is
    dropped by the caller."""
    for alias, version in pending.get("aliases", {}).items():
        if version is None:
            try:
                client.delete_registered_model_alias(model, alias)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
        else:
            client.set_registered_model_alias(model, alias, str(version))
    tags = pending.get("tags") or []  # NOTE: Lua's cjson writes an empty list as {}
    for tag in tags if isinstance(tags, list) else []:
        prefix = f"mlops.{tag['alias']}"
        version = str(tag["version"])
        client.set_model_version_tag(
            model, version, f"{prefix}.reason", tag["reason"][:MAX_TAG_CHARS]
        )
        client.set_model_version_tag(model, version, f"{prefix}.at", str(tag["at"]))
        if tag.get("pipeline_id"):
            client.set_model_version_tag(model, version, f"{prefix}.pipeline", tag["pipeline_id"])


async def sync_once(redis: Redis, client: MlflowClient, failing: dict[str, str]) -> int:
    """One pass over the pending entries; returns how many were applied (or dropped)."""
    done = 0
    entries: dict[Any, Any] = await redis.hgetall(ALIASES_PENDING_KEY)  # type: ignore[misc]  # redis-py#2399
    for raw_model, raw in entries.items():
        model = raw_model.decode() if isinstance(raw_model, bytes) else raw_model
        try:
            await asyncio.to_thread(apply, client, model, json.loads(raw))
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                _warn_once(failing, model, f"MLflow refused for now: {exc.message}")
                continue
            logger.warning("aliases of %r dropped: MLflow says %s", model, exc.message)
        except Exception as exc:  # MLflow away: kept, and tried again on the next pass
            _warn_once(failing, model, f"{type(exc).__name__}: {exc}")
            continue
        failing.pop(model, None)
        await redis.eval(  # type: ignore[misc]  # redis-py#2399
            _FORGET_IF_UNCHANGED, 1, ALIASES_PENDING_KEY, model, raw
        )
        done += 1
    return done


async def run_forever(redis: Redis, client: MlflowClient) -> None:
    failing: dict[str, str] = {}
    while True:
        try:
            await sync_once(redis, client, failing)
        except RedisError as exc:
            logger.warning("alias sync: Redis unreachable (%s)", exc)
        except Exception:
            logger.exception("alias sync failed unexpectedly")
        await asyncio.sleep(INTERVAL_S)


def _warn_once(failing: dict[str, str], model: str, problem: str) -> None:
    if failing.get(model) != problem:
        failing[model] = problem
        logger.warning("aliases of %r not yet in MLflow: %s", model, problem)
