"""A worker that cannot make a sandbox runs no pushed code: its pipelines fail at the first
stage saying why and which setting allows unsandboxed runs, and its heartbeat says so."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis

from mlops_core import worker_heartbeat
from tests.pipeline_worker.conftest import REPO_TOKEN, Platform
from tests.pipeline_worker.support import (
    TINY_MODEL,
    contract_notebook,
    create_pipeline,
    enqueue,
    git_repo,
    wait_for_status,
)


async def test_pipelines_fail_at_the_first_stage_naming_the_setting(
    platform: Platform, start_worker, tmp_path: Path
):
    # A machine without util-linux's tools (PATH holds none of them): no box can be made.
    start_worker("no-sandbox", PATH="/nonexistent")
    sha = git_repo(tmp_path / "origin", {"train.ipynb": contract_notebook(TINY_MODEL)})
    pipeline_id = create_pipeline(
        platform.sessions, (tmp_path / "origin").as_uri(), sha, token=REPO_TOKEN
    )
    await enqueue(platform.redis_url, pipeline_id)
    pipeline = await wait_for_status(platform.sessions, pipeline_id, timeout_s=60)
    assert (pipeline.status, pipeline.error_stage) == ("failed", "cloning")
    assert "sandbox" in pipeline.error_message and "MLOPS_SANDBOX=off" in pipeline.error_message
    assert "unshare" in pipeline.error_message

    beats = await worker_heartbeat.live_workers(Redis.from_url(platform.redis_url))
    assert [b.sandbox for b in beats] == ["local"]
    assert "unshare" in (beats[0].sandbox_problem or "")
