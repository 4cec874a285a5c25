"""The pipeline job queue (arq on Redis): the contract between the gateway and the workers.

The gateway creates a `Pipeline` row (status `queued`) and enqueues one job, named
`run_pipeline`, whose only argument is the pipeline id, which is also the job id, so a
pipeline can never be queued twice. Cancelling sets a flag that the worker checks between
stages and while the notebook runs.
"""

from __future__ import annotations

from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio import Redis

JOB_NAME = "run_pipeline"
QUEUE_NAME = "mlops:pipelines"
CANCEL_TTL_S = 24 * 3600


def redis_settings(redis_url: str) -> RedisSettings:
    return RedisSettings.from_dsn(redis_url)


async def connect(redis_url: str) -> ArqRedis:
    return await create_pool(redis_settings(redis_url), default_queue_name=QUEUE_NAME)


async def enqueue_pipeline(arq: ArqRedis, pipeline_id: str) -> bool:
    """Queue a pipeline; False when a job with this id already exists."""
    job = await arq.enqueue_job(JOB_NAME, pipeline_id, _job_id=pipeline_id, _queue_name=QUEUE_NAME)
    return job is not None


def cancel_key(pipeline_id: str) -> str:
    return f"mlops:pipeline:{pipeline_id}:cancel"


async def request_cancel(redis: Redis, pipeline_id: str) -> None:
    await redis.set(cancel_key(pipeline_id), "1", ex=CANCEL_TTL_S)


async def cancel_requested(redis: Redis, pipeline_id: str) -> bool:
    return bool(await redis.exists(cancel_key(pipeline_id)))
