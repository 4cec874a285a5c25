"""Readiness checks: a service is up when its check passes; a dependant waits on them."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import httpx
import redis


@dataclass(frozen=True)
class HttpReady:
    """Ready when `GET url` answers 200."""

    url: str

    def passes(self) -> bool:
        # NOTE: trust_env=False so an HTTP(S)_PROXY in the user's shell never swallows
        # requests to our own loopback services.
        try:
            return httpx.get(self.url, timeout=1.0, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    def describe(self) -> str:
        return self.url


@dataclass(frozen=True)
class RedisReady:
    """Ready when Redis at `url` answers PING (so a loading AOF counts as not yet ready)."""

    url: str

    def passes(self) -> bool:
        try:
            client = redis.Redis.from_url(self.url, socket_timeout=1.0, socket_connect_timeout=1.0)
            with client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def describe(self) -> str:
        return redact(self.url)


Check = HttpReady | RedisReady


def redact(url: str) -> str:
    """The URL without its password, fit for logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user + ':***' if user else '***'}@{host}"


def pending(checks: Iterable[Check]) -> list[Check]:
    return [check for check in checks if not check.passes()]


def wait_for(checks: Iterable[Check], timeout_s: float, interval_s: float = 0.25) -> None:
    """Return once every check passes; TimeoutError naming the ones that never did."""
    waiting = list(checks)
    deadline = time.monotonic() + timeout_s
    while waiting := pending(waiting):
        if time.monotonic() >= deadline:
            names = ", ".join(check.describe() for check in waiting)
            raise TimeoutError(f"not ready after {timeout_s:g} s: {names}")
        time.sleep(interval_s)
