"""Fleet mode: converge this replica's repository to the desired state in Redis, and report.

A replica reconciles on every change notice and on a periodic resync (so a missed message
or a restart heals itself), and writes a heartbeat with a TTL saying what it serves. A
malformed entry in the desired state is skipped (`fleet_state` logs it once): the model it
names stays as it is, and every other model is reconciled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from inference.repository import ModelRepository
from mlops_core import fleet_state
from mlops_core.errors import MlopsError, ModelNotResident
from mlops_core.fleet_state import DesiredModel, ReplicaReport

log = logging.getLogger(__name__)


class FleetReconciler:
    def __init__(
        self,
        repository: ModelRepository,
        redis: Redis,
        replica_id: str,
        grpc_address: str,
        http_address: str,
        resync_interval_s: float = 5.0,
        heartbeat_interval_s: float = 1.0,
        heartbeat_ttl_s: float = 5.0,
    ) -> None:
        self.repository = repository
        self.redis = redis
        self.replica_id = replica_id
        self.grpc_address = grpc_address
        self.http_address = http_address
        self.resync_interval_s = resync_interval_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.synced = asyncio.Event()
        """Set once the first full reconcile has finished: the replica is ready."""
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="fleet-listen"),
            asyncio.create_task(self._resync_loop(), name="fleet-resync"),
            asyncio.create_task(self._heartbeat_loop(), name="fleet-heartbeat"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(RedisError, OSError):
            await fleet_state.clear_heartbeat(self.redis, self.replica_id)

    async def reconcile(self) -> None:
        """Bring every model to its desired versions; unload what is no longer desired."""
        async with self._lock:
            desired = await fleet_state.get_desired(self.redis)
            for name in self.repository.model_names():
                if name not in desired.models and name not in desired.malformed:
                    self.repository.remove(name)
            # NOTE: models reconcile concurrently so one slow download delays no other model.
            await asyncio.gather(
                *(self._reconcile_model(name, want) for name, want in desired.models.items())
            )
        await self.heartbeat()

    async def _reconcile_model(self, name: str, desired: DesiredModel) -> None:
        keep = desired.versions()[: self.repository.keep_versions]
        candidate = desired.candidate
        if candidate is not None and candidate.version not in keep:
            keep.append(candidate.version)  # kept whatever `keep_versions` says: it takes traffic
        self.repository.set_desired(name, desired)
        # NOTE: under a memory budget, only a model with a version in memory (it is in use)
        # evicts others to load its desired active version; the others, and warm versions,
        # load only into free room, so a resync never churns what requests keep resident.
        # The rest load on their first request. A rollout's candidate always loads: it is
        # pinned, and the rollout waits for it.
        budgeted = self.repository.memory_budget_bytes > 0
        in_use = not budgeted or self.repository.is_resident(name)
        if not in_use and candidate is None and not self.repository.fits(name, desired.active):
            # NOTE: checked here, as most of hundreds of models do not fit on each resync:
            # a load attempt each would cost a task and an exception.
            return
        try:
            # NOTE: the new active version loads and warms before anything is unloaded, so
            # the previous one serves until the atomic switch.
            await self.repository.swap(name, desired.active, make_room=in_use)
        except ModelNotResident as exc:
            log.debug("%s version %s loads on demand: %s", name, desired.active, exc.message)
        except MlopsError as exc:
            log.warning("cannot activate %s version %s: %s", name, desired.active, exc.message)
        for version in keep[1:]:
            is_candidate = candidate is not None and candidate.version == version
            try:
                await self.repository.load(name, version, make_room=not budgeted or is_candidate)
            except ModelNotResident as exc:
                log.debug("%s version %s loads on demand: %s", name, version, exc.message)
            except MlopsError as exc:
                log.warning("cannot keep %s version %s warm: %s", name, version, exc.message)
        # NOTE: only now, with the candidate loaded (or failed to), is its route applied: no
        # request ever goes to a version still loading.
        self.repository.set_route(name, candidate)
        if self.repository.reported_active(name) in keep:
            self.repository.evict(name, keep=keep)

    def report(self) -> ReplicaReport:
        return ReplicaReport(
            replica_id=self.replica_id,
            grpc_address=self.grpc_address,
            http_address=self.http_address,
            models=self.repository.served(with_stats=True),
        )

    async def heartbeat(self) -> None:
        await fleet_state.write_heartbeat(self.redis, self.report(), self.heartbeat_ttl_s)

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self.redis.pubsub()
                await pubsub.subscribe(fleet_state.CHANGED_CHANNEL)
                # NOTE: reconcile after subscribing, so a change made in between is not lost.
                self._wake.set()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._wake.set()
            except (RedisError, OSError) as exc:
                log.warning("fleet channel lost (%s); resubscribing", exc)
                await asyncio.sleep(1.0)

    async def _resync_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.resync_interval_s)
            self._wake.clear()
            try:
                await self.reconcile()
                self.synced.set()
            except (RedisError, OSError) as exc:
                log.warning("reconcile failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
            except Exception:
                # NOTE: this loop must outlive any one failure: a loop that died would leave
                # the replica serving a stale state, and a starting one never ready.
                log.exception("reconcile failed unexpectedly; retrying")
                await asyncio.sleep(1.0)

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self.heartbeat()
            except (RedisError, OSError) as exc:
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(self.heartbeat_interval_s)
