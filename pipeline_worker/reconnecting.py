"""An arq worker that outlives its Redis: it waits for Redis to come back instead of exiting.

arq's `Worker.main` polls the queue in a loop with no error handling: the first command that
finds Redis gone raises out of `main`, `run()` closes the worker and the process exits (under
`make run`, taking the platform with it). Here a poll that cannot reach Redis is logged and
retried with a backoff; redis-py reconnects on the next command, so consuming resumes as soon
as Redis answers again. Jobs already running carry on; their own Redis calls fail or succeed
on their own terms (the lease and heartbeat refreshes ride out an outage).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from arq.worker import Worker, get_kwargs
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
"""What a Redis that is down, restarting or still loading its data raises."""
FIRST_PAUSE_S = 0.5
MAX_PAUSE_S = 5.0


class ReconnectingWorker(Worker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._away_since: float | None = None
        self._pause_s = FIRST_PAUSE_S

    @classmethod
    def from_settings(cls, settings: type) -> ReconnectingWorker:
        """Built from an arq `WorkerSettings` class, as `arq.run_worker` builds its Worker."""
        return cls(**get_kwargs(settings))

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except UNREACHABLE as exc:
            await self._redis_away(exc)
            return
        if self._away_since is not None:
            logger.warning(
                "Redis answers again after %.0f s: consuming jobs",
                time.monotonic() - self._away_since,
            )
            self._away_since, self._pause_s = None, FIRST_PAUSE_S

    async def _redis_away(self, exc: BaseException) -> None:
        if self._away_since is None:
            self._away_since = time.monotonic()
            logger.error("Redis is unreachable (%s): waiting for it to come back", exc)
        await asyncio.sleep(self._pause_s)
        self._pause_s = min(self._pause_s * 2, MAX_PAUSE_S)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        # NOTE: arq counts a job (job_counter, a semaphore slot) before its Redis calls and
        # gives the count back only when the job's task ends; a call that raises in between
        # would leak the slot for good, and a few outages would leave the worker picking
        # nothing. So each job is started on its own and its slot given back on that error.
        for job_id in job_ids:
            try:
                await super().start_jobs([job_id])
            except UNREACHABLE:
                self.job_counter -= 1
                self.sem.release()
                raise
