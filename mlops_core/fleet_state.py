"""The fleet's desired state and replica heartbeats in Redis: the contract between the
platform (pipeline deploy stage, gateway rollback) and the inference replicas.

Keys:
- `mlops:fleet:desired` hash: model name -> JSON `{"active": "3", "warm": ["2", "1"]}`, plus
  `"candidate": {"version": "4", "weight": 0.1, "mirror_rate": 0.05, "agreement_rtol": 0.01}`
  while a rollout runs. A model absent from the hash is served by no replica.
- `mlops:fleet:changed` channel: a model name is published whenever its entry changes.
- `mlops:fleet:replica:<replica_id>` string with a TTL: JSON `ReplicaReport`.

Every reader validates every entry: a malformed one (not JSON, wrong types, a version that is
not a string of digits, a name that is not a model name, unknown fields) is logged once and
skipped, so one bad entry never stops the fleet, a listing or a deploy of another model.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

from pydantic import ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError
from redis.asyncio import Redis
from redis.exceptions import ResponseError, WatchError

from mlops_core.errors import InvalidInput, RolloutTimeout

log = logging.getLogger(__name__)
# NOTE: redis-py types the asyncio client's hash commands as `Awaitable[T] | T`, which mypy
# will not await (redis/redis-py#2399): each `type: ignore[misc]  # redis-py#2399` below is that.

DESIRED_KEY = "mlops:fleet:desired"
CHANGED_CHANNEL = "mlops:fleet:changed"
REPLICA_KEY_PREFIX = "mlops:fleet:replica:"

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,255}")
"""What a model name may be (it names folders on every replica)."""
Version = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,20}$")]
"""A model version: the MLflow registered-model version, a string of ASCII digits."""
# NOTE: strict (no "1" -> 1 coercion) and no unknown fields: an entry either is exactly what
# the writers below write, or it is skipped.
_STRICT = ConfigDict(strict=True, extra="forbid")

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00015, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
    0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
"""Upper bounds of the latency buckets replicas count requests in (one more bucket holds the
slower ones): fine enough below 10 ms that a p99 read from them compares two versions."""


Share = Annotated[float, Field(ge=0.0, le=1.0)]

ROUTING_KEY_METADATA = "x-routing-key"
"""gRPC metadata a caller may send so that its requests always land on the same side of a
candidate route (replicas read it only while a route sends the candidate some traffic)."""


@dataclass(frozen=True)
class CandidateRoute:
    """A version under rollout beside the active one (the champion).

    Requests that name no version go to the candidate with probability `weight` (a caller
    sending a routing key always lands on the same side for a given weight); a request
    answered by the champion is also run on the candidate with probability `mirror_rate`, off
    the response path, and the two answers compared. A shadow rollout is weight 0."""

    __pydantic_config__ = _STRICT

    version: Version
    weight: Share = 0.0
    mirror_rate: Share = 0.0
    agreement_rtol: Annotated[float, Field(ge=0.0)] = 0.01
    """Two numeric answers agree when within this relative tolerance; labels must be equal."""


@dataclass(frozen=True)
class DesiredModel:
    __pydantic_config__ = _STRICT

    active: Version
    """The version every replica should serve by default."""
    warm: list[Version] = field(default_factory=list)
    """Other versions to keep loaded, newest first, so switching to them is instant."""
    candidate: CandidateRoute | None = None

    def versions(self) -> list[str]:
        """Active first, then the candidate, then the warm ones: what replicas keep loaded."""
        first = [self.active]
        if self.candidate is not None and self.candidate.version != self.active:
            first.append(self.candidate.version)
        return [*first, *[v for v in self.warm if v not in first]]


@dataclass
class VersionStats:
    """Counters a replica keeps per loaded version since it started (they only grow, until a
    restart resets them): what a rollout's analysis reads from the heartbeats."""

    __pydantic_config__ = _STRICT

    requests: int = 0
    errors: int = 0
    latency: list[int] = field(default_factory=list)
    """Requests per bucket of `LATENCY_BUCKETS_S`, with one more for slower ones."""
    mirrored: int = 0
    """Requests answered by the champion and also run on this version (never returned)."""
    mirror_errors: int = 0
    mirror_latency: list[int] = field(default_factory=list)
    compared: int = 0
    """Mirrored requests whose answers were compared with the champion's..."""
    agreed: int = 0
    """...and of those, the ones that agreed."""
    mirror_dropped: int = 0
    """Requests drawn for the mirror but not run, as the replica's mirror queue was full."""


def version_key(version: str) -> tuple[int, str]:
    """Sort key of model versions: by number, and anything that is not a version after them
    all, by its text."""
    # NOTE: isascii too: str.isdigit() accepts digits such as "²" that int() refuses.
    return (int(version), "") if version.isascii() and version.isdigit() else (1 << 62, version)


def next_desired(previous: DesiredModel | None, version: str, keep_versions: int) -> DesiredModel:
    """The entry that makes `version` active (a deploy, a rollback): the versions `previous`
    held stay warm, its active one first, `keep_versions` loaded in all at most."""
    earlier = previous.versions() if previous else []
    warm = [v for v in earlier if v != version][: max(keep_versions - 1, 0)]
    return DesiredModel(active=version, warm=warm)


@dataclass
class ServedModel:
    __pydantic_config__ = _STRICT

    active: str | None
    loaded: list[str]
    failed: dict[str, str] = field(default_factory=dict)
    """Versions that could not be loaded, with the reason."""
    candidate: CandidateRoute | None = None
    """The route this replica applies (set once the candidate is loaded)."""
    stats: dict[str, VersionStats] = field(default_factory=dict)


@dataclass
class ReplicaReport:
    __pydantic_config__ = _STRICT

    replica_id: str
    grpc_address: str
    http_address: str
    models: dict[str, ServedModel]
    reported_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        # NOTE: pydantic's serializer, not json.dumps(asdict(self)): a replica writes this
        # every second holding the GIL, and asdict's deep copy took 9 ms for 200 models
        # (48 ms for 500), against 0.1 ms (0.6 ms), the same JSON.
        return _REPLICA_REPORT.dump_json(self).decode()


@dataclass(frozen=True)
class DesiredState:
    """The desired-state hash as read: its valid entries, and the models whose entry is not."""

    models: dict[str, DesiredModel]
    malformed: frozenset[str] = frozenset()
    """Valid model names whose entry is malformed: what replicas serve of them stays as it is
    (their intent is unknown) until the entry is written again."""


_DESIRED_MODEL = TypeAdapter(DesiredModel)
_REPLICA_REPORT = TypeAdapter(ReplicaReport)


class MalformedEntries:
    """Logs each malformed entry once, not on every read (replicas read every few seconds).

    An entry is known by its field and a digest of its bytes, so a new bad value is logged
    again; only entries still present are remembered."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._logged: dict[str, bytes] = {}

    def report(self, key: str, raw: bytes, reason: str) -> None:
        digest = hashlib.blake2b(raw, digest_size=16).digest()
        if self._logged.get(key) != digest:
            self._logged[key] = digest
            log.warning("skipping malformed %s %s: %s", self.what, _shown(key), reason)

    def keep_only(self, keys: set[str]) -> None:
        for key in self._logged.keys() - keys:
            del self._logged[key]

    def discard(self, key: str) -> None:
        self._logged.pop(key, None)


malformed_desired = MalformedEntries("desired-state entry")
malformed_reports = MalformedEntries("replica heartbeat")


def parse_desired_model(raw: str | bytes) -> DesiredModel:
    """One desired-state value; ValueError says what is wrong with it."""
    try:
        return _DESIRED_MODEL.validate_json(raw)
    except ValidationError as exc:
        raise ValueError(_reasons(exc)) from None


def parse_replica_report(raw: str | bytes) -> ReplicaReport:
    """One heartbeat value; ValueError says what is wrong with it."""
    try:
        return _REPLICA_REPORT.validate_json(raw)
    except ValidationError as exc:
        raise ValueError(_reasons(exc)) from None


def check_model_name(name: str) -> None:
    if not MODEL_NAME.fullmatch(name):
        raise ValueError(
            f"{_shown(name)} is not a model name (a letter or digit, then letters, digits, "
            "'.', '_' or '-'; 256 characters at most)"
        )


async def set_desired(redis: Redis, model: str, desired: DesiredModel) -> None:
    """Record the version that should serve (and those to keep warm) and notify replicas.

    This overwrites whatever the model's entry held, a malformed one included."""
    raw = json.dumps(asdict(desired))
    try:
        check_model_name(model)
        parse_desired_model(raw)
    except ValueError as exc:
        raise InvalidInput(f"cannot record the desired state of {_shown(model)}: {exc}") from None
    await redis.hset(DESIRED_KEY, model, raw)  # type: ignore[misc]  # redis-py#2399
    await redis.publish(CHANGED_CHANNEL, model)


async def update_desired(
    redis: Redis, model: str, change: Callable[[DesiredModel | None], DesiredModel | None]
) -> DesiredModel | None:
    """Read, change and write one model's entry as one step: a writer that raced in between
    makes `change` run again on what it wrote. `change` returning None removes the entry."""
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(DESIRED_KEY)
                raw = await pipe.hget(DESIRED_KEY, model)  # type: ignore[misc]  # redis-py#2399
                current: DesiredModel | None = None
                if raw is not None:
                    with contextlib.suppress(ValueError):
                        current = parse_desired_model(raw)
                wanted = change(current)
                pipe.multi()
                if wanted is None:
                    pipe.hdel(DESIRED_KEY, model)
                else:
                    value = json.dumps(asdict(wanted))
                    parse_desired_model(value)
                    pipe.hset(DESIRED_KEY, model, value)
                await pipe.execute()
                break
            except WatchError:
                continue
    await redis.publish(CHANGED_CHANNEL, model)
    return wanted


async def remove_desired(redis: Redis, model: str) -> None:
    """Stop serving a model everywhere."""
    await redis.hdel(DESIRED_KEY, model)  # type: ignore[misc]  # redis-py#2399
    await redis.publish(CHANGED_CHANNEL, model)


async def get_desired(redis: Redis) -> DesiredState:
    """Every valid entry of the desired state; malformed ones are logged once and skipped."""
    try:
        raw: dict[Any, Any]
        raw = await redis.hgetall(DESIRED_KEY)  # type: ignore[misc]  # redis-py#2399
    except ResponseError as exc:
        if not str(exc).startswith("WRONGTYPE"):
            raise
        malformed_desired.report(DESIRED_KEY, b"", "the key is not a hash; nothing is desired")
        return DesiredState({})
    models: dict[str, DesiredModel] = {}
    malformed: set[str] = set()
    bad: set[str] = set()
    for raw_name, value in raw.items():
        name = _text(raw_name)
        try:
            check_model_name(name)
        except ValueError as exc:
            bad.add(name)
            malformed_desired.report(name, value, str(exc))
            continue
        try:
            models[name] = parse_desired_model(value)
        except ValueError as exc:
            bad.add(name)
            malformed.add(name)
            malformed_desired.report(name, value, str(exc))
    malformed_desired.keep_only(bad)
    return DesiredState(models, frozenset(malformed))


async def get_desired_model(redis: Redis, model: str) -> DesiredModel | None:
    """The model's entry; None when it has none, or a malformed one (logged once)."""
    try:
        raw = await redis.hget(DESIRED_KEY, model)  # type: ignore[misc]  # redis-py#2399
    except ResponseError as exc:
        if not str(exc).startswith("WRONGTYPE"):
            raise
        malformed_desired.report(DESIRED_KEY, b"", "the key is not a hash; nothing is desired")
        return None
    if raw is None:
        return None
    try:
        desired = parse_desired_model(raw)
    except ValueError as exc:
        malformed_desired.report(model, raw, str(exc))
        return None
    malformed_desired.discard(model)
    return desired


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
    reports: list[ReplicaReport] = []
    bad: set[str] = set()
    for key, value in zip(keys, values, strict=True):
        if value is None:  # expired between SCAN and MGET
            continue
        try:
            reports.append(parse_replica_report(value))
        except ValueError as exc:
            bad.add(_text(key))
            malformed_reports.report(_text(key), value, str(exc))
    malformed_reports.keep_only(bad)
    return sorted(reports, key=lambda r: r.replica_id)


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


def route_applied(
    replicas: list[ReplicaReport], model: str, active: str, route: CandidateRoute | None
) -> bool:
    """True when at least one replica is live and every live one serves `active` with `route`
    (the candidate loaded and routed at that weight), or with no route for None."""
    return bool(replicas) and all(
        (served := r.models.get(model)) is not None
        and served.active == active
        and served.candidate == route
        for r in replicas
    )


async def wait_for_route(
    redis: Redis,
    model: str,
    active: str,
    route: CandidateRoute | None,
    timeout_s: float,
    poll_s: float = 0.1,
) -> list[ReplicaReport]:
    """Wait until every live replica applies `route` beside `active`; raise RolloutTimeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        replicas = await live_replicas(redis)
        if route_applied(replicas, model, active, route):
            return replicas
        if time.monotonic() >= deadline:
            seen = {r.replica_id: _route_seen(r, model, route) for r in replicas}
            detail = (
                f"replicas report (candidate, load failure) {seen}"
                if replicas
                else "no live inference replica"
            )
            raise RolloutTimeout(
                f"model {model!r}: candidate {route.version if route else None!r} not routed on "
                f"every replica after {timeout_s:.0f}s: {detail}"
            )
        await asyncio.sleep(poll_s)


def _route_seen(
    report: ReplicaReport, model: str, route: CandidateRoute | None
) -> tuple[str | None, str]:
    """(the candidate a replica routes to, why the wanted one failed to load if it did)."""
    served = report.models.get(model)
    if served is None:
        return None, ""
    routed = served.candidate.version if served.candidate else None
    return routed, served.failed.get(route.version, "") if route else ""


def _text(value: str | bytes) -> str:
    # NOTE: "replace": a key that is not UTF-8 still gets a name, which no check accepts.
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _shown(text: str, limit: int = 80) -> str:
    """A name as a log line or message may show it: quoted, and cut if long."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


def _reasons(exc: ValidationError) -> str:
    # NOTE: without the input values: an entry may be huge, and its bytes are not ours.
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    )
