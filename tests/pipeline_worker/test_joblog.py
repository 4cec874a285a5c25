"""A pipeline's log on a real Redis: a print bomb keeps its head, its tail, every platform line
and the end, in the history, for live and late watchers, and in the transcript kept in the
database; Redis holds a bounded amount whatever is printed."""

from __future__ import annotations

import asyncio
import types
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from gateway.log_follow import follow
from mlops_core import logstream
from mlops_core.db import PipelineStatus, make_engine, make_session_factory
from mlops_core.logstream import LogBounds
from pipeline_worker.context import finalize
from pipeline_worker.deps import WorkerDeps
from pipeline_worker.joblog import MAX_LINE_CHARS, PipelineLog
from pipeline_worker.scrub import Redactor
from tests.pipeline_worker.support import create_pipeline, get_pipeline

BOMB_LINES = 25_000


@pytest.fixture
async def redis(fresh_redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(fresh_redis_url)
    yield client
    await client.aclose()


async def running() -> tuple[str | None, str | None]:
    return None, None


async def collect(entries: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry async for entry in entries]


async def start_watcher(redis: Redis, pipeline_id: str) -> asyncio.Task[list[dict[str, Any]]]:
    """A live watcher, subscribed before anything is written."""
    watcher = asyncio.create_task(collect(follow(redis, pipeline_id, running)))
    channel = logstream.log_channel(pipeline_id)
    for _ in range(100):
        if (await redis.pubsub_numsub(channel))[0][1]:
            return watcher
        await asyncio.sleep(0.05)
    raise AssertionError("the watcher never subscribed")


def lines(entries: list[dict[str, Any]]) -> list[str]:
    return [e["line"] for e in entries if "line" in e]


def output(start: int, stop: int) -> list[str]:
    return [f"[executing] cell 1 | line {i}" for i in range(start, stop)]


async def test_a_print_bomb_keeps_head_gaps_tail_platform_lines_and_the_end(
    redis: Redis, tmp_path: Path
):
    sessions = make_session_factory(make_engine(f"sqlite:///{tmp_path / 'mlops.db'}"))
    pipeline_id = create_pipeline(sessions, "file:///nowhere", "abc123")
    deps = cast(WorkerDeps, types.SimpleNamespace(sessions=sessions))
    log = PipelineLog(redis, pipeline_id, Redactor(set()))
    watcher = await start_watcher(redis, pipeline_id)

    log.stage = "cloning"
    await log.write("started")
    await log.write("done in 0.10s")
    log.stage = "executing"
    await log.write("started")
    await log.write("cell 1 (mlops:training) started")
    # Outputs come both as large chunks and one line per call.
    for start in range(0, 10_000, 1_000):
        await log.write_output("\n".join(f"cell 1 | line {i}" for i in range(start, start + 1_000)))
    await log.write("cell 1 still running")
    for i in range(10_000, BOMB_LINES):
        await log.write_output(f"cell 1 | line {i}")
    await log.write("cell 1 finished in 9.00s")
    await log.write("done in 9.50s")
    await finalize(
        deps,
        pipeline_id,
        log,
        PipelineStatus.SUCCEEDED,
        stage="executing",
        message=None,
        run_id=None,
    )

    history = await logstream.history(redis, pipeline_id)
    # The tail: the last 4,997 output lines, two platform lines and the final line, then the end.
    expected = [
        "[cloning] started",
        "[cloning] done in 0.10s",
        "[executing] started",
        "[executing] cell 1 (mlops:training) started",
        *output(0, 2_000),
        "[executing] 8,000 lines were dropped here (a pipeline's log keeps the first 2,000 "
        "lines of notebook output and the last 5,000 lines)",
        "[executing] cell 1 still running",
        "[executing] 10,003 lines were dropped here (a pipeline's log keeps the first 2,000 "
        "lines of notebook output and the last 5,000 lines)",
        *output(20_003, BOMB_LINES),
        "[executing] cell 1 finished in 9.00s",
        "[executing] done in 9.50s",
        "[executing] pipeline succeeded",
    ]
    assert lines(history) == expected
    assert history[-1] == {"seq": BOMB_LINES + 9, "end": "succeeded"}
    seqs = [e["seq"] for e in history]
    assert seqs == sorted(set(seqs))

    # The database keeps the same lines, each with its time.
    kept = get_pipeline(sessions, pipeline_id).log or ""
    assert [line.split(" ", 1)[1] for line in kept.splitlines()] == expected

    # A live watcher saw every line as it was written, then the end.
    seen = await asyncio.wait_for(watcher, 30)
    assert [e["seq"] for e in seen] == list(range(1, BOMB_LINES + 10))
    assert [line for line in lines(seen) if "| line" in line] == output(0, BOMB_LINES)
    assert seen[-1]["end"] == "succeeded"

    # A watcher arriving late gets the kept history and stops at the end.
    late = await asyncio.wait_for(collect(follow(redis, pipeline_id, running)), 10)
    assert late == history

    # Redis holds the bounded lists only.
    assert await redis.llen(logstream.tail_key(pipeline_id)) == 5_000 + 1
    assert await redis.llen(logstream.log_key(pipeline_id)) == 2_000 + 4 + 1 + 2


async def test_platform_lines_past_their_bound_are_dropped_like_output_but_the_end_is_kept(
    redis: Redis,
):
    # As a notebook of thousands of cells would write: every line a platform line.
    pipeline_id = str(uuid.uuid4())
    bounds = LogBounds(head=3, tail=4, kept=5)
    log = PipelineLog(redis, pipeline_id, Redactor(set()), bounds)
    log.stage = "executing"
    await log.write("\n".join(f"cell {i} started" for i in range(20)))
    await log.write("pipeline failed at executing: boom")
    await log.end("failed")
    history = await logstream.history(redis, pipeline_id)
    assert lines(history) == [
        *(f"[executing] cell {i} started" for i in range(5)),
        "[executing] 12 lines were dropped here (a pipeline's log keeps the first 3 lines of "
        "notebook output and the last 4 lines)",
        *(f"[executing] cell {i} started" for i in (17, 18, 19)),
        "[executing] pipeline failed at executing: boom",
    ]
    assert history[-1] == {"seq": 22, "end": "failed"}


async def test_head_and_tail_across_stages_and_a_second_attempt(redis: Redis):
    pipeline_id = str(uuid.uuid4())
    bounds = LogBounds(head=2, tail=3, kept=100)
    first = PipelineLog(redis, pipeline_id, Redactor(set()), bounds)
    first.stage = "executing"
    await first.write_output("a\nb\nc\nd\ne\nf")
    await first.write("worker stopping")
    # The next attempt writes through a new log object: the head is already used.
    second = PipelineLog(redis, pipeline_id, Redactor(set()), bounds)
    await second.write("attempt 2", stage="cloning")
    await second.write_output("g\nh\ni\nj", stage="executing")
    await second.write("pipeline succeeded", stage="executing")
    await second.end("succeeded")
    history = await logstream.history(redis, pipeline_id)
    assert lines(history) == [
        "[executing] a",
        "[executing] b",
        "[executing] 4 lines were dropped here (a pipeline's log keeps the first 2 lines of "
        "notebook output and the last 3 lines)",
        "[executing] worker stopping",
        "[cloning] attempt 2",
        "[executing] 2 lines were dropped here (a pipeline's log keeps the first 2 lines of "
        "notebook output and the last 3 lines)",
        "[executing] i",
        "[executing] j",
        "[executing] pipeline succeeded",
    ]
    assert history[-1]["end"] == "succeeded"
    # The gap entries sit at the seq of their first dropped line, between their neighbours.
    assert [e["seq"] for e in history] == [1, 2, 3, 7, 8, 9, 11, 12, 13, 14]


async def test_lines_are_masked_and_cut(redis: Redis):
    pipeline_id = str(uuid.uuid4())
    log = PipelineLog(redis, pipeline_id, Redactor({"hunter2-secret"}))
    await log.write_output(
        "token hunter2-secret\n" + "x" * (MAX_LINE_CHARS + 10), stage="executing"
    )
    await log.write("", stage="executing")
    assert lines(await logstream.history(redis, pipeline_id)) == [
        "[executing] token ***",
        "[executing] " + "x" * MAX_LINE_CHARS + " [...]",
        "[executing] ",
    ]
    with pytest.raises(ValueError, match="not a stage name"):
        await log.write("x", stage="bad\tstage")
