"""The mirror of a rollout: requests the active version (the champion) answered, run again on
the candidate off the response path, and the two answers compared.

A caller pays for a mirror only with a random draw and, when drawn, a put on a queue after its
response is encoded: one thread per replica runs the mirrored requests in order. Under more
than that thread keeps up with, requests are dropped (and counted) rather than queued without
bound. The candidate's answers go to no one, and count in no series of the champion's.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from inference.batcher import Arrays
from inference.metrics import ReplicaMetrics
from mlops_core.errors import MlopsError

if TYPE_CHECKING:
    from inference.repository import LoadedVersion

log = logging.getLogger(__name__)

MAX_PENDING = 32
"""Mirrored requests waiting for the mirror thread, at most (about: see `MirrorQueue.submit`).
A full queue means the thread is already behind; more waiting would only hold more requests'
inputs in memory and compare answers later."""

ABSOLUTE_TOLERANCE = 1e-9
"""Added to the relative tolerance when comparing float answers, so that zeros can agree."""


class MirrorQueue:
    """The replica's mirror thread and its bounded queue of work; the thread starts with the
    first mirror and never ends (a daemon: it holds nothing that a stop must finish)."""

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self.max_pending = max_pending
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Called on the event loop's thread when a mirror is set up: starts the thread once."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="mirror", daemon=True)
            self._thread.start()

    def submit(self, job: Callable[[], None]) -> bool:
        """Queue `job`; False, without queueing it, when the queue is full.

        NOTE: the size check and the put are not one atomic step, so gRPC threads submitting
        at the same instant may each pass the check: the bound is exceeded by at most their
        number, for the price of no lock on the request path (SimpleQueue is lock-free C)."""
        if self._jobs.qsize() >= self.max_pending:
            return False
        self._jobs.put(job)
        return True

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except Exception:  # a bug of ours: log it, and keep the thread for the next job
                log.exception("a mirrored request failed unexpectedly")


class Mirror:
    """Runs a share `rate` of the champion's requests on the candidate and counts, in the
    candidate's series, the runs, failures, latencies, comparisons and agreements."""

    def __init__(
        self,
        champion: LoadedVersion,
        candidate: LoadedVersion,
        rate: float,
        agreement_rtol: float,
        jobs: MirrorQueue,
        metrics: ReplicaMetrics,
    ) -> None:
        self.candidate = candidate
        self.rate = rate
        self.agreement_rtol = agreement_rtol
        self._jobs = jobs
        labels = (candidate.name, candidate.version)
        self._runs = metrics.mirror_requests.labels(*labels)
        self._failures = metrics.mirror_failures.labels(*labels)
        self._latency = metrics.mirror_latency.labels(*labels)
        self._compared = metrics.mirror_compared.labels(*labels)
        self._agreed = metrics.mirror_agreed.labels(*labels)
        self._dropped = metrics.mirror_dropped.labels(*labels)
        # NOTE: the answers compared are each model's first output, as its signature lists
        # them (a classifier's label): one output, and the one a caller reads first.
        self._champion_output = champion.signature.outputs[0].name
        self._candidate_output = candidate.signature.outputs[0].name
        jobs.start()

    def offer(self, inputs: Arrays, rows: int, answer: Arrays) -> None:
        """Called after the champion answered `inputs` with `answer` (its response encoded):
        mirror the request with probability `rate`."""
        if random.random() >= self.rate:
            return
        if not self._jobs.submit(partial(self._run, inputs, rows, answer[self._champion_output])):
            self._dropped.inc()

    def _run(self, inputs: Arrays, rows: int, expected: np.ndarray) -> None:
        self._runs.inc()
        started = time.perf_counter()
        try:
            outputs = self.candidate.infer(inputs, rows)
        except MlopsError:  # the candidate could not run on this request
            self._failures.inc()
            return
        except Exception:  # a bug of ours, which the mirror thread logs: still a failed run
            self._failures.inc()
            raise
        self._latency.observe(time.perf_counter() - started)
        self._compared.inc()
        if answers_agree(outputs[self._candidate_output], expected, self.agreement_rtol):
            self._agreed.inc()


def answers_agree(candidate: np.ndarray, champion: np.ndarray, rtol: float) -> bool:
    """True when every row agrees: floats within `rtol` of the champion's, anything else
    (labels: integers, booleans, strings) exactly equal."""
    if candidate.shape != champion.shape:
        return False
    if champion.dtype.kind in "fc":
        return bool(
            np.allclose(candidate, champion, rtol=rtol, atol=ABSOLUTE_TOLERANCE, equal_nan=True)
        )
    return bool(np.array_equal(candidate, champion))
