"""`python -m pipeline_worker.probe`: exit 0 when a worker of this host (this pod, this
container) has a fresh heartbeat in Redis; the exec probe of the worker's Deployment.

A worker's id is `<hostname>-<pid>` (`lease.owner_id`), and its heartbeat key
(`mlops_core.worker_heartbeat`) lives for `TTL_S` after each beat, so a key that is there
with its expiry set is a beat at most that old. The probe runs as a process of its own in
the worker's container, so it finds the worker by this host's name, whatever its PID (1, or
a child of tini).

Exit status: 0 a fresh heartbeat; 1 none (the worker is dead, stuck or not started yet);
2 Redis unreachable or not configured. With `--liveness`, 2 becomes 0: a Redis this pod
cannot reach is not the worker's fault, and restarting it would only end its running
pipelines; the readiness probe still reports it.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
from typing import cast

import redis
from redis.exceptions import RedisError

from mlops_core.settings import get_settings
from mlops_core.worker_heartbeat import KEY_PREFIX

FRESH = 0
NO_HEARTBEAT = 1
REDIS_AWAY = 2
TIMEOUT_S = 2.0
"""Per Redis call: well inside a probe's timeoutSeconds."""


def worker_ids_of_host(client: redis.Redis, hostname: str) -> list[str]:
    """Ids of this host's workers whose heartbeat is fresh: the key has its TTL and holds
    the same worker id."""
    own = re.compile(re.escape(hostname) + r"-\d+")
    pattern = KEY_PREFIX + re.sub(r"([*?\[\]\\])", r"\\\1", hostname) + "-*"
    fresh = []
    for key in client.scan_iter(match=pattern, count=100):
        worker_id = key.decode().removeprefix(KEY_PREFIX)
        # NOTE: redis-py types its sync and asyncio commands alike (`Awaitable | Any`); this
        # client is the sync one, so each answer is the value itself.
        if not own.fullmatch(worker_id) or cast(int, client.pttl(key)) <= 0:
            continue
        try:
            beat = json.loads(cast(bytes | None, client.get(key)) or b"")
        except ValueError:
            continue
        if isinstance(beat, dict) and beat.get("worker_id") == worker_id:
            fresh.append(worker_id)
    return fresh


def probe(redis_url: str | None, hostname: str) -> tuple[int, str]:
    """The exit status and the line that explains it."""
    if not redis_url:
        return REDIS_AWAY, "REDIS_URL is not set"
    client = redis.Redis.from_url(
        redis_url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S
    )
    try:
        fresh = worker_ids_of_host(client, hostname)
    except (RedisError, OSError) as exc:
        # NOTE: the error's type only: its text can name the Redis host, never its password,
        # but a probe's output lands in pod events that more people read.
        return REDIS_AWAY, f"Redis unreachable ({type(exc).__name__})"
    finally:
        client.close()
    if fresh:
        return FRESH, f"heartbeat fresh: {', '.join(sorted(fresh))}"
    return NO_HEARTBEAT, f"no fresh heartbeat of a worker on {hostname}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline_worker.probe")
    parser.add_argument(
        "--liveness",
        action="store_true",
        help="pass when Redis cannot be reached: only a missing heartbeat fails",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    status, reason = probe(get_settings().redis_url, socket.gethostname())
    if args.liveness and status == REDIS_AWAY:
        status = FRESH
    print(reason, file=sys.stdout if status == FRESH else sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    main()
