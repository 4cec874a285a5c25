"""The models a replica has loaded, and the hot-swap primitive that rollouts and rollbacks use.

A version is loaded and warmed before it can become active; activation is one assignment
on the event loop, so it is atomic for every request (requests run on the gRPC server's
threads and only read). A request resolves its version once, when it starts, and holds it
until it ends: a swap or an unload never changes the version of a request in flight.

During a rollout a model also has a route to a candidate version (set only once the candidate
is loaded): it takes a share of the requests that name no version, and may mirror those the
active version answers (`inference.mirror`).

With a memory budget (`memory_budget_bytes`), each version's memory is measured as it loads
(`inference.memory`) and the resident versions' sum stays under the budget: a load first
unloads the least recently used versions that are evictable, that is neither serving a
request now, nor a rollout's candidate, nor used in the last `RECENT_USE_S`. A model's
desired versions stay known when not resident; a request for one (`NotResident`) waits a
bounded time for it to load (`wait_for_load`), sharing the load with concurrent requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from inference.batcher import Arrays, BatchObserver, DynamicBatcher
from inference.memory import MemorySnapshot
from inference.metrics import ReplicaMetrics
from inference.mirror import Mirror, MirrorQueue
from inference.runtime import OnnxModel
from inference.sources import ModelSource, is_version
from mlops_core.errors import (
    MlopsError,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    ModelNotResident,
    ModelRuntimeError,
)
from mlops_core.fleet_state import CandidateRoute, DesiredModel, ServedModel, version_key
from mlops_core.signature import MODEL_FILE, ModelSignature

log = logging.getLogger(__name__)

RECENT_USE_S = 0.05
"""A version used this recently is not evicted: it is hot (over 20 requests a second), or a
request that just waited for its load is about to run on it. The least recently used order
does the rest. NOTE: kept short because a client sweeping through more models than the
budget holds faster than this gets UNAVAILABLE for the next one (the whole working set is
pinned); a longer pin would protect hot models from bursts of cold loads at that price."""
RETRY_AFTER_MS = 100
"""The retry hint of a request that could not wait for its version: a load of a small model
takes milliseconds, and a recently used version becomes evictable after RECENT_USE_S."""

VersionKey = tuple[str, str]


class NotResident(ModelNotResident):
    """Raised by `resolve` for a desired version that is not in memory: the caller may wait
    for its load (`ModelRepository.wait_for_load`); if it does not, it answers UNAVAILABLE."""

    def __init__(self, name: str, version: str) -> None:
        super().__init__(
            f"model {name!r} version {version!r} is not loaded on this replica", RETRY_AFTER_MS
        )
        self.name = name
        self.version = version


@dataclass(frozen=True)
class BatchingPolicy:
    enabled: bool = True
    max_batch_size: int = 64
    max_queue_delay_us: int = 0
    min_fixed_cost_us: int = 0
    """Batch a model only when one call costs at least this much regardless of its rows:
    that is all that merging requests saves, and waking the threads that share a call costs
    some microseconds each."""


class LoadedVersion:
    """A warmed model version ready to serve, with its own batcher and metric series."""

    def __init__(
        self,
        name: str,
        version: str,
        model: OnnxModel,
        policy: BatchingPolicy,
        metrics: ReplicaMetrics,
    ) -> None:
        self.name = name
        self.version = version
        self.model = model
        self.memory_bytes = 0
        """What loading it took (`inference.memory`), counted against the memory budget."""
        self.last_used = time.monotonic() - RECENT_USE_S
        """Set by every request (a float store, tens of ns): the LRU order of eviction. A load
        counts as a use for that order, but not for the recent-use pin: a version loaded by
        the fleet's desired state and never asked for is not protected from eviction."""
        self.in_flight: deque[None] = deque()
        """One item per request running on it now. NOTE: a deque, as its append and pop are
        atomic under the GIL on the gRPC threads, where `n += 1` is a read-modify-write."""
        self.requests = metrics.requests.labels(name, version)
        self.latency = metrics.latency.labels(name, version)
        self._failures = metrics.failures
        self.mirror: Mirror | None = None
        """Set on the active version while its model's route mirrors requests to a candidate."""
        signature = model.signature
        max_rows = (
            signature.max_batch_size
            if signature.max_batch_size is not None
            else policy.max_batch_size
        )
        delay = (
            signature.max_queue_delay_us
            if signature.max_queue_delay_us is not None
            else policy.max_queue_delay_us
        )
        cost = model.call_cost
        self.batcher: DynamicBatcher | None = None
        if (
            policy.enabled
            and max_rows > 1
            and cost is not None
            and cost.fixed_s * 1e6 >= policy.min_fixed_cost_us
        ):
            queue_time = metrics.queue_time.labels(name, version)
            batch_rows = metrics.batch_rows.labels(name, version)
            self.batcher = DynamicBatcher(
                self.run,
                max_batch_size=max_rows,
                max_queue_delay_us=delay,
                observer=BatchObserver(
                    on_batch=batch_rows.observe, on_queue_time=queue_time.observe
                ),
            )

    @property
    def signature(self) -> ModelSignature:
        return self.model.signature

    @property
    def batched(self) -> bool:
        return self.batcher is not None

    def infer(self, inputs: Arrays, rows: int) -> Arrays:
        """Run on the calling thread (a gRPC server thread), batched with concurrent calls."""
        if self.batcher is not None:
            return self.batcher.infer(inputs, rows)
        return self.run(inputs)

    def run(self, inputs: Arrays) -> Arrays:
        """One onnxruntime call on inputs `inference.tensors.decode_inputs` validated.

        Raises ModelRuntimeError (a server error) for whatever the session raises.
        NOTE: onnxruntime's exception types do not tell a caller's mistake from the model's:
        a wrong width or datatype raises InvalidArgument, but so does a Gather node deep in the
        graph whose indices fall out of range, and a Reshape that cannot apply raises Fail.
        Everything it checks about an input (name, datatype, rank, fixed dimensions) and the
        values (finite numbers) were checked before the call, so what fails now is the model.
        """
        try:
            return self.model.run(inputs)
        except Exception as exc:
            raise ModelRuntimeError(
                f"model {self.name!r} version {self.version!r} failed while running: "
                f"{_first_line(exc)}"
            ) from exc

    def count_failure(self, code: str) -> None:
        self._failures.labels(self.name, self.version, code).inc()


@dataclass(frozen=True)
class Route:
    """A model's candidate route as applied: the desired one, with its version loaded."""

    spec: CandidateRoute
    candidate: LoadedVersion

    def choose(self, champion: LoadedVersion, routing_key: str | None) -> LoadedVersion:
        """The candidate for a share `weight` of requests, else the champion.

        A request with a routing key draws from the key's CRC-32, the same in every process
        and across restarts (unlike `hash()`): a caller stays on one side, and, once on the
        candidate, stays there as the weight grows. Weight 0 (a shadow) never draws it."""
        weight = self.spec.weight
        if not weight:
            return champion
        draw = random.random() if routing_key is None else zlib.crc32(routing_key.encode()) / 2**32
        return self.candidate if draw < weight else champion


@dataclass
class ModelEntry:
    versions: dict[str, LoadedVersion] = field(default_factory=dict)
    active: LoadedVersion | None = None
    route: Route | None = None
    recent: list[str] = field(default_factory=list)
    """Versions in the order they were last active, most recent last."""
    failed: dict[str, str] = field(default_factory=dict)
    desired: DesiredModel | None = None
    """What the fleet (or the directory, standalone) wants served: with a memory budget, its
    versions may be served without being resident."""

    def known(self, version: str) -> bool:
        return self.desired is not None and version in self.desired.versions()


class ModelRepository:
    def __init__(
        self,
        source: ModelSource,
        metrics: ReplicaMetrics,
        policy: BatchingPolicy,
        keep_versions: int = 3,
        intra_op_threads: int = 1,
        memory_budget_bytes: int = 0,
        cold_load_wait_s: float = 3.0,
        version_size: Callable[[str, str, int], int] | None = None,
    ) -> None:
        self.source = source
        self.metrics = metrics
        self.policy = policy
        self.keep_versions = max(1, keep_versions)
        self.intra_op_threads = intra_op_threads
        self._models: dict[str, ModelEntry] = {}
        self._loading: dict[tuple[str, str], asyncio.Task[LoadedVersion]] = {}
        self.split_models: frozenset[str] = frozenset()
        """Models whose route sends the candidate a share of the traffic: only their requests'
        routing keys matter (reading one from a request costs about a microsecond)."""
        self.mirror_queue = MirrorQueue()
        self.memory_budget_bytes = memory_budget_bytes
        """0: unlimited, every desired version loads and stays."""
        self.cold_load_wait_s = cold_load_wait_s
        self._version_size = version_size
        """(name, version, ONNX file bytes) -> bytes, in place of measuring: the measure is
        process-wide, so tests of the eviction rules that share a process with other work fix
        the sizes instead."""
        self.metrics.memory_budget.set(memory_budget_bytes)
        # NOTE: one session is created at a time, so the memory a load measures is its own.
        self._open_lock = asyncio.Lock()
        self._sizes: dict[VersionKey, int] = {}
        """Each version's measured size, kept after it is unloaded: its next load's estimate."""
        self._signatures: dict[VersionKey, ModelSignature] = {}
        """Signatures of versions loaded once, for ModelMetadata while they are not resident."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loading_into_free_room: set[VersionKey] = set()
        """Loads in `_loading` that may not evict (`load(make_room=False)`)."""
        self._runtime_set_up = False

    # --- serving -------------------------------------------------------------------------
    def resolve(
        self,
        name: str,
        version: str | None,
        routing_key: str | None = None,
        *,
        split: bool = True,
    ) -> LoadedVersion:
        """The version a request runs on: the one named, or else the model's active version or,
        for the share of requests its route sends there, the candidate (`split=False`: always
        the active version)."""
        entry = self._models.get(name)
        if entry is None or (
            not entry.versions and entry.desired is None and not self._is_loading(name)
        ):
            served = self.model_names()
            raise ModelNotFound(f"model {name!r} is not served here; served models: {served}")
        if not version:
            active = entry.active
            if active is None:
                desired = entry.desired
                if desired is not None and self._loads_on_demand(entry, desired.active):
                    raise NotResident(name, desired.active)
                raise ModelNotReady(f"model {name!r} is still loading")
            route = entry.route
            if route is None or not split:
                return active
            return route.choose(active, routing_key)
        loaded = entry.versions.get(version)
        if loaded is not None:
            return loaded
        if entry.known(version) and self._loads_on_demand(entry, version):
            raise NotResident(name, version)
        if (name, version) in self._loading:
            raise ModelNotReady(f"model {name!r} version {version!r} is still loading")
        raise ModelNotFound(
            f"model {name!r} has no version {version!r} loaded; loaded versions: "
            f"{sorted(entry.versions, key=version_key)}"
        )

    def _loads_on_demand(self, entry: ModelEntry, version: str) -> bool:
        """A desired version not resident is loaded by its requests under a memory budget
        (without one, reconcile loads every desired version: it is loading, or failed to)."""
        return bool(self.memory_budget_bytes) and version not in entry.failed

    def wait_for_load(self, missing: NotResident) -> None:
        """On a gRPC thread: have the event loop load a version `resolve` found not resident,
        and wait for it up to `cold_load_wait_s`. Concurrent callers share one load; one that
        stops waiting leaves the load running, so its retry finds the version resident.

        Raises ModelNotResident (UNAVAILABLE, with a retry hint) when the wait runs out or the
        budget cannot be freed, ModelLoadError when the version cannot load at all."""
        loop = self._loop
        if loop is None:
            raise ModelNotReady(f"model {missing.name!r} cannot load yet: the replica is starting")
        future = asyncio.run_coroutine_threadsafe(
            self._load_requested(missing.name, missing.version), loop
        )
        outcome = self.metrics.cold_load_waits
        try:
            future.result(self.cold_load_wait_s)
        except TimeoutError:
            outcome.labels("timeout").inc()
            raise ModelNotResident(
                f"model {missing.name!r} version {missing.version!r} is loading on this replica "
                f"and was not ready within {self.cold_load_wait_s:g}s; retry",
                RETRY_AFTER_MS,
            ) from None
        except ModelNotResident:
            outcome.labels("no_room").inc()
            raise
        outcome.labels("served").inc()

    async def _load_requested(self, name: str, version: str) -> LoadedVersion:
        loaded = await self.load(name, version)
        entry = self._models.get(name)
        if (
            entry is not None
            and entry.active is None
            and entry.desired is not None
            and entry.desired.active == version
            and version in entry.versions
        ):
            self.activate(name, version)
        # NOTE: a fresh use, so the version is not evicted before the waiting request runs.
        loaded.last_used = time.monotonic()
        return loaded

    def signature_of(self, name: str, version: str | None) -> tuple[str, ModelSignature] | None:
        """The (version, signature) of a desired version that is not resident but was loaded
        once, without loading it again; None if it never was."""
        entry = self._models.get(name)
        if entry is None or entry.desired is None:
            return None
        version = version or entry.desired.active
        signature = self._signatures.get((name, version))
        return None if signature is None else (version, signature)

    # NOTE: the readers below run on gRPC server threads while the event loop adds and removes
    # entries. list() copies a dict in one step under the GIL; iterating it directly in Python
    # code could raise "dictionary changed size during iteration".
    def _is_loading(self, name: str) -> bool:
        return any(n == name for n, _ in list(self._loading))

    def model_names(self) -> list[str]:
        """Models served here: loaded, or (with a memory budget) desired and loaded on demand."""
        return sorted(
            n for n, e in list(self._models.items()) if e.versions or e.desired is not None
        )

    def set_desired(self, name: str, desired: DesiredModel) -> None:
        self._models.setdefault(name, ModelEntry()).desired = desired

    def is_resident(self, name: str) -> bool:
        entry = self._models.get(name)
        return entry is not None and bool(entry.versions)

    def resident(self) -> dict[VersionKey, LoadedVersion]:
        return {
            (name, version): loaded
            for name, entry in list(self._models.items())
            for version, loaded in list(entry.versions.items())
        }

    def resident_bytes(self) -> int:
        return sum(loaded.memory_bytes for loaded in self.resident().values())

    def served(self, with_stats: bool = False) -> dict[str, ServedModel]:
        """What this replica serves, as reported in its heartbeat (which adds the counters of
        every loaded version: `with_stats`, a few milliseconds for dozens of versions)."""
        entries = [
            (n, e)
            for n, e in list(self._models.items())
            if e.versions or e.failed or (self.memory_budget_bytes and e.desired is not None)
        ]
        stats = (
            self.metrics.version_stats([(n, v) for n, e in entries for v in list(e.versions)])
            if with_stats
            else {}
        )
        served: dict[str, ServedModel] = {}
        for name, entry in entries:
            loaded = sorted(entry.versions, key=version_key)
            route = entry.route
            served[name] = ServedModel(
                active=self._reported_active(entry),
                loaded=loaded,
                failed=dict(entry.failed),
                candidate=route.spec if route is not None else None,
                stats={v: stats[(name, v)] for v in loaded if (name, v) in stats},
            )
        return served

    # NOTE: the two below answer for one model what `served()` reports, without building
    # every model's report: callers run once per model, and with hundreds of models the
    # whole report each time made a resync quadratic (2 ms per call for 200 models).
    def reported_active(self, name: str) -> str | None:
        entry = self._models.get(name)
        return None if entry is None else self._reported_active(entry)

    def loaded_versions(self, name: str) -> list[str]:
        entry = self._models.get(name)
        return [] if entry is None else sorted(list(entry.versions), key=version_key)

    def _reported_active(self, entry: ModelEntry) -> str | None:
        if entry.active is not None:
            return entry.active.version
        desired = entry.desired
        if desired is not None and self._loads_on_demand(entry, desired.active):
            return desired.active  # not resident: served by loading it on its next request
        return None

    def is_ready(self, name: str, version: str | None = None) -> bool:
        """Whether a request for it would be served; one for a version not resident loads it
        (under a memory budget), so that version counts as ready."""
        try:
            self.resolve(name, version)
        except NotResident:
            return True
        except MlopsError:
            return False
        return True

    # --- hot swap ------------------------------------------------------------------------
    async def load(self, name: str, version: str, *, make_room: bool = True) -> LoadedVersion:
        """Fetch, load and warm a version (once, however many callers ask) without activating it.

        Under a memory budget, least recently used versions are unloaded first to make room;
        `make_room=False` loads only into free room. Either raises ModelNotResident when the
        version does not fit."""
        self._loop = asyncio.get_running_loop()
        if not is_version(version):
            raise ModelNotFound(f"version {version!r} of {name!r} is not a positive integer")
        entry = self._models.setdefault(name, ModelEntry())
        if version in entry.versions:
            return entry.versions[version]
        key = (name, version)
        task = self._loading.get(key)
        if task is None:
            task = self._loop.create_task(self._load(name, version, make_room))
            self._loading[key] = task
            if not make_room:
                self._loading_into_free_room.add(key)
        shared_without_room = key in self._loading_into_free_room
        try:
            return await asyncio.shield(task)
        except ModelNotResident:
            if not (make_room and shared_without_room):
                raise
            # NOTE: the load this caller joined would only use free room (a resync's); a
            # request's load may evict, so it tries again as its own.
            if self._loading.get(key) is task:
                del self._loading[key]
                self._loading_into_free_room.discard(key)
            return await self.load(name, version, make_room=True)
        finally:
            if task.done() and self._loading.get(key) is task:
                self._loading.pop(key, None)
                self._loading_into_free_room.discard(key)

    async def _load(self, name: str, version: str, make_room: bool) -> LoadedVersion:
        entry = self._models[name]
        try:
            directory = await self.source.fetch(name, version)
            async with self._open_lock:
                file_bytes = _file_size(directory / MODEL_FILE)
                self._make_room(self._estimate(name, version, file_bytes), evict=make_room)
                set_up: OnnxModel | None = None
                if not self._runtime_set_up:
                    # NOTE: the first session in a process also sets onnxruntime up (about
                    # 9 MiB of resident set here), a cost no one version should be charged.
                    # It stays open while the measured one opens, which would else reuse
                    # the memory it freed and measure less than it takes.
                    set_up = await asyncio.to_thread(self._open_and_warm, directory)
                    self._runtime_set_up = True
                before = MemorySnapshot.take()
                model = await asyncio.to_thread(self._open_and_warm, directory)
                size = MemorySnapshot.take().growth_since(before, floor=file_bytes)
                if self._version_size is not None:
                    size = self._version_size(name, version, file_bytes)
                del set_up
        except ModelNotResident:
            raise  # no room now: not a failure of the version
        except MlopsError as exc:
            entry.failed[version] = exc.message
            log.warning("model %s version %s failed to load: %s", name, version, exc.message)
            raise ModelLoadError(f"model {name!r} version {version!r}: {exc.message}") from exc
        loaded = LoadedVersion(name, version, model, self.policy, self.metrics)
        loaded.memory_bytes = size
        entry.versions[version] = loaded
        entry.failed.pop(version, None)
        self._sizes[name, version] = size
        self._signatures[name, version] = model.signature
        self.metrics.loaded.labels(name).set(len(entry.versions))
        self.metrics.version_loads.inc()
        if self._models.get(name) is entry:  # else removed while it loaded: not resident
            self.metrics.version_memory.labels(name, version).set(size)
        self._account()
        if self.memory_budget_bytes:
            try:
                # the estimate was low: trim the overshoot, never the version just loaded
                self._make_room(0, evict=True, keep=loaded)
            except ModelNotResident:
                log.warning(
                    "resident versions take %d bytes, over the %d-byte budget: none is evictable",
                    self.resident_bytes(),
                    self.memory_budget_bytes,
                )
        cost = model.call_cost
        log.info(
            "model %s version %s loaded (%.2f MiB); %s",
            name,
            version,
            size / 2**20,
            "not batchable"
            if cost is None
            else f"a call costs {cost.fixed_s * 1e6:.1f} us + {cost.per_row_s * 1e6:.2f} us/row: "
            + ("batched" if loaded.batched else "not batched"),
        )
        return loaded

    def fits(self, name: str, version: str) -> bool:
        """Whether the version would load into free room now (its file unread: an estimate)."""
        if not self.memory_budget_bytes:
            return True
        free = self.memory_budget_bytes - self.resident_bytes()
        return self._estimate(name, version, 0) <= free

    def _estimate(self, name: str, version: str, file_bytes: int) -> int:
        """What a version will take: its size when it last loaded, else the median of the sizes
        measured so far (models on one replica tend to be alike), at least its file's size."""
        known = self._sizes.get((name, version))
        if known is not None:
            return known
        sizes = sorted(self._sizes.values())
        return max(file_bytes, sizes[len(sizes) // 2] if sizes else 0)

    def _make_room(self, needed: int, *, evict: bool, keep: LoadedVersion | None = None) -> None:
        """Unload least recently used evictable versions until `needed` more bytes fit in the
        budget; unload nothing and raise ModelNotResident if they cannot be freed."""
        budget = self.memory_budget_bytes
        if not budget:
            return
        resident = self.resident()
        free = budget - sum(loaded.memory_bytes for loaded in resident.values())
        if needed <= free:
            return
        if not evict:
            raise ModelNotResident(
                f"no room in the memory budget ({free} of {budget} bytes free, {needed} needed)",
                RETRY_AFTER_MS,
            )
        now = time.monotonic()
        victims = sorted(
            (
                loaded
                for key, loaded in resident.items()
                if loaded is not keep and self._evictable(key, loaded, now)
            ),
            key=lambda loaded: loaded.last_used,
        )
        chosen: list[LoadedVersion] = []
        for loaded in victims:
            if free >= needed:
                break
            chosen.append(loaded)
            free += loaded.memory_bytes
        if free < needed:
            in_flight = sum(1 for loaded in resident.values() if loaded.in_flight)
            recent = sum(1 for v in resident.values() if now - v.last_used < RECENT_USE_S)
            raise ModelNotResident(
                f"the replica's memory budget ({budget} bytes) is full: {len(resident)} resident "
                f"versions, {len(resident) - len(victims)} of them pinned ({in_flight} in "
                f"flight, {recent} used in the last {RECENT_USE_S}s, or a rollout's candidate)",
                RETRY_AFTER_MS,
            )
        for loaded in chosen:
            log.info(
                "model %s version %s evicted (idle %.1fs) to make room",
                loaded.name,
                loaded.version,
                now - loaded.last_used,
            )
            self.unload(loaded.name, loaded.version)
            self.metrics.version_evictions.inc()

    def _evictable(self, key: VersionKey, loaded: LoadedVersion, now: float) -> bool:
        if loaded.in_flight or now - loaded.last_used < RECENT_USE_S:
            return False
        entry = self._models.get(key[0])
        if entry is None:
            return True
        if entry.route is not None and entry.route.candidate is loaded:
            return False
        candidate = entry.desired.candidate if entry.desired is not None else None
        return candidate is None or candidate.version != key[1]

    def _account(self) -> None:
        self.metrics.resident_memory.set(self.resident_bytes())

    def _open_and_warm(self, directory: Path) -> OnnxModel:
        model = OnnxModel(directory, self.intra_op_threads)
        model.warm()
        return model

    def activate(self, name: str, version: str) -> LoadedVersion:
        """Make a loaded version the one that serves requests naming no version."""
        entry = self._models.get(name)
        loaded = entry.versions.get(version) if entry else None
        if entry is None or loaded is None:
            raise ModelNotFound(f"model {name!r} version {version!r} is not loaded")
        changed = entry.active is not loaded
        entry.active = loaded
        if version in entry.recent:
            entry.recent.remove(version)
        entry.recent.append(version)
        if changed:
            if entry.route is not None and entry.route.candidate is loaded:
                self._set_route(name, entry, None)  # the candidate was promoted
            else:
                self._apply_route(name, entry)
        self.metrics.active_version.labels(name).set(int(version))
        log.info("model %s version %s active", name, version)
        return loaded

    async def swap(self, name: str, version: str, *, make_room: bool = True) -> LoadedVersion:
        """Load (if needed), warm and activate `version`, then keep the last N versions loaded.

        If the version cannot be loaded, ModelLoadError is raised and the active one serves on
        (ModelNotResident if it does not fit the memory budget: see `load`).
        """
        await self.load(name, version, make_room=make_room)
        loaded = self.activate(name, version)
        self.evict(name)
        return loaded

    def set_route(self, name: str, spec: CandidateRoute | None) -> None:
        """Apply the model's candidate route, or clear it (None). A route whose version is not
        loaded (still loading, or failed to) or is the active one is cleared: no request is
        ever sent to a version still loading."""
        entry = self._models.get(name)
        if entry is None:
            return
        candidate = entry.versions.get(spec.version) if spec is not None else None
        route = (
            Route(spec, candidate)
            if spec is not None and candidate is not None and candidate is not entry.active
            else None
        )
        if route != entry.route:
            self._set_route(name, entry, route)

    def _set_route(self, name: str, entry: ModelEntry, route: Route | None) -> None:
        entry.route = route
        self._apply_route(name, entry)
        if route is None:
            log.info("model %s: no candidate route", name)
        else:
            log.info(
                "model %s: version %s is the candidate (weight %s, mirror rate %s)",
                name,
                route.candidate.version,
                route.spec.weight,
                route.spec.mirror_rate,
            )

    def _apply_route(self, name: str, entry: ModelEntry) -> None:
        """Give the active version, and only it, the route's mirror; note whether the model's
        traffic is split. Called on the event loop whenever the route or the active version
        changes; requests see each attribute change at once."""
        route, champion = entry.route, entry.active
        mirror = None
        if route is not None and champion is not None and route.spec.mirror_rate > 0:
            spec = route.spec
            mirror = Mirror(
                champion,
                route.candidate,
                spec.mirror_rate,
                spec.agreement_rtol,
                self.mirror_queue,
                self.metrics,
            )
        for loaded in entry.versions.values():
            loaded.mirror = mirror if loaded is champion else None
        if route is not None and route.spec.weight > 0:
            self.split_models = self.split_models | {name}
        else:
            self.split_models = self.split_models - {name}

    def evict(self, name: str, keep: list[str] | None = None) -> None:
        """Unload versions beyond `keep` (default: the N most recently active), never the
        active version nor the route's candidate."""
        entry = self._models.get(name)
        if entry is None:
            return
        if keep is None:
            recent = [v for v in reversed(entry.recent) if v in entry.versions]
            others = sorted(
                (v for v in entry.versions if v not in recent), key=version_key, reverse=True
            )
            keep = (recent + others)[: self.keep_versions]
        protected = {entry.active, entry.route.candidate if entry.route else None}
        for version, loaded in list(entry.versions.items()):
            if version not in keep and loaded not in protected:
                self.unload(name, version)

    def unload(self, name: str, version: str) -> None:
        """Forget a version; requests already running on it finish on it."""
        entry = self._models.get(name)
        if entry is None or version not in entry.versions:
            return
        loaded = entry.versions.pop(version)
        loaded.mirror = None
        if entry.active is loaded:
            entry.active = None
            self._apply_route(name, entry)
        if entry.route is not None and entry.route.candidate is loaded:
            self._set_route(name, entry, None)
        self.metrics.loaded.labels(name).set(len(entry.versions))
        self._forget_memory(name, version)
        log.info("model %s version %s unloaded", name, version)

    def remove(self, name: str) -> None:
        """Stop serving a model altogether."""
        entry = self._models.pop(name, None)
        if entry is not None:
            self.split_models = self.split_models - {name}
            for loaded in entry.versions.values():
                loaded.mirror = None
                self._forget_memory(name, loaded.version)
            self.metrics.loaded.labels(name).set(0)
            log.info("model %s removed", name)

    def _forget_memory(self, name: str, version: str) -> None:
        with contextlib.suppress(KeyError):  # never set: it failed, or was never loaded
            self.metrics.version_memory.remove(name, version)
        self._account()


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _first_line(exc: Exception, limit: int = 500) -> str:
    """The first line of an exception's message, bounded: onnxruntime's can run long."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
