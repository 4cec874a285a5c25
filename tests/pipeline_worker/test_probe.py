"""`python -m pipeline_worker.probe` as a container runs it, against a real Redis: it passes
only on a fresh heartbeat of a worker of this host."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from benchmarks.processes import free_port
from mlops_core import worker_heartbeat
from mlops_core.worker_heartbeat import KEY_PREFIX, WorkerBeat
from pipeline_worker.probe import FRESH, NO_HEARTBEAT, REDIS_AWAY

HOST = socket.gethostname()


def run_probe(redis_url: str | None, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    # cwd: a directory without a .env file, so only this environment counts.
    return subprocess.run(
        [sys.executable, "-m", "pipeline_worker.probe", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
async def redis(fresh_redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(fresh_redis_url)
    yield client
    await client.aclose()


async def test_a_fresh_heartbeat_of_this_host_passes_and_nothing_else_does(
    redis: Redis, fresh_redis_url: str, tmp_path: Path
):
    absent = run_probe(fresh_redis_url, tmp_path)
    assert absent.returncode == NO_HEARTBEAT, absent
    assert f"no fresh heartbeat of a worker on {HOST}" in absent.stderr

    # Other hosts' workers, a look-alike name, a key without its expiry, a body that names
    # another worker: none of them is this host's worker beating.
    await worker_heartbeat.beat(redis, WorkerBeat("other-host-41", "local", None))
    await worker_heartbeat.beat(redis, WorkerBeat(f"{HOST}x-42", "local", None))
    await redis.set(KEY_PREFIX + f"{HOST}-43", json.dumps({"worker_id": f"{HOST}-43"}))
    await redis.set(KEY_PREFIX + f"{HOST}-44", '{"worker_id": "elsewhere-44"}', ex=15)
    await redis.set(KEY_PREFIX + f"{HOST}-45", "not json", ex=15)
    assert run_probe(fresh_redis_url, tmp_path).returncode == NO_HEARTBEAT

    worker_id = f"{HOST}-1"  # PID 1: the worker as a container's first process
    await worker_heartbeat.beat(redis, WorkerBeat(worker_id, "kubernetes", None))
    present = run_probe(fresh_redis_url, tmp_path)
    assert present.returncode == FRESH, present
    assert worker_id in present.stdout
    assert run_probe(fresh_redis_url, tmp_path, "--liveness").returncode == FRESH

    await worker_heartbeat.forget(redis, worker_id)
    assert run_probe(fresh_redis_url, tmp_path).returncode == NO_HEARTBEAT
    assert run_probe(fresh_redis_url, tmp_path, "--liveness").returncode == NO_HEARTBEAT


def test_redis_away_fails_readiness_but_not_liveness(tmp_path: Path):
    nobody = f"redis://:probe-secret-password@127.0.0.1:{free_port()}/0"
    away = run_probe(nobody, tmp_path)
    assert away.returncode == REDIS_AWAY, away
    assert "Redis unreachable" in away.stderr
    assert "probe-secret-password" not in away.stdout + away.stderr
    assert run_probe(nobody, tmp_path, "--liveness").returncode == FRESH
    unset = run_probe(None, tmp_path)
    assert unset.returncode == REDIS_AWAY and "REDIS_URL is not set" in unset.stderr
