"""MLflow that does not answer: each client call fails fast, and one pipeline retries its
calls for at most `MLOPS_MLFLOW_RETRY_BUDGET_S` in all, then fails naming MLflow.

MLflow's client retries one HTTP call 7 times over about 4 minutes by default, so a pipeline
whose MLflow was down hung that long per call, then failed as an "internal error". Here each
call gets one try (`fail_fast`), and `PatientMlflow` retries calls that got no answer with a
backoff while the pipeline's budget lasts. A call MLflow answered with a refusal is never
retried: that is the caller's error to report.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from typing import Any, cast

import requests
from mlflow.tracking import MlflowClient

from mlops_core.errors import MlflowUnreachable
from mlops_core.urls import shown_url

logger = logging.getLogger(__name__)

FAST_FAIL_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
"""One try per HTTP call, and a socket that stays silent for 10 s counts as no answer."""
FIRST_RETRY_S = 0.5
MAX_RETRY_S = 5.0
NO_ANSWER = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.RetryError,
    ConnectionError,
)
# Set when the worker stops, so a retry loop in a thread ends instead of holding the exit.
_stopping = threading.Event()


def fail_fast() -> None:
    """Give each HTTP call of MLflow's client in this process one short try (settings the
    operator made in the environment win)."""
    for name, value in FAST_FAIL_ENV.items():
        os.environ.setdefault(name, value)


def stop_waiting() -> None:
    """The worker is stopping: retry loops give up at once."""
    _stopping.set()


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what it was raised from, outermost first."""
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in found):
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def did_not_answer(exc: BaseException) -> bool:
    """True when `exc` (or what it was raised from) says MLflow could not be reached, timed
    out, or answered only with errors it calls transient (5xx, 429): not a refusal."""
    return any(isinstance(e, NO_ANSWER) for e in _chain(exc))


class PatientMlflow:
    """One pipeline's MLflow client: an `MlflowClient` whose calls that get no answer are
    retried until the pipeline has waited `budget_s` on MLflow in all; after that each call
    gets one try, so closing the run at the end never waits a second budget."""

    def __init__(self, client: MlflowClient, budget_s: float) -> None:
        self._client = client
        self.budget_s = budget_s
        self.waited_s = 0.0
        self.address = shown_url(client.tracking_uri)

    def as_client(self) -> MlflowClient:
        # NOTE: it answers every attribute of MlflowClient (see __getattr__), so code written
        # for the client takes it unchanged.
        return cast(MlflowClient, self)

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._client, name)
        return functools.partial(self._call, found) if callable(found) else found

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        pause = FIRST_RETRY_S
        while True:
            started = time.monotonic()
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                if not did_not_answer(exc):
                    raise
                self.waited_s += time.monotonic() - started
                left = self.budget_s - self.waited_s
                if left <= 0 or _stopping.is_set():
                    raise MlflowUnreachable(self.message()) from exc
                # NOTE: the type only: MLflow's text holds request URLs, not ours to vet.
                logger.warning(
                    "MLflow at %s did not answer %s (%s; %.0f of %.0f s waited): retrying",
                    self.address,
                    getattr(method, "__name__", "a call"),
                    type(_chain(exc)[-1]).__name__,
                    self.waited_s,
                    self.budget_s,
                )
            paused = time.monotonic()
            _stopping.wait(min(pause, left))
            self.waited_s += time.monotonic() - paused
            pause = min(pause * 2, MAX_RETRY_S)

    def message(self) -> str:
        return (
            f"MLflow at {self.address} did not answer for {self.budget_s:g} s "
            "(MLOPS_MLFLOW_RETRY_BUDGET_S): check that its server is up and reachable"
        )
