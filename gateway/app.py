"""The gateway's FastAPI app: `create_app(settings)`, and `app` for `uvicorn gateway.app:app`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from redis.exceptions import RedisError

from gateway import dashboard
from gateway.body_limit import BodyLimit, RequestBodyLimit
from gateway.deps import Resources, open_resources, require_api_key
from gateway.errors import ConfigError, install_error_handlers
from gateway.routes import models, pipelines, repos, rollouts, system, v2, webhook, ws
from mlops_core import gc_tuning
from mlops_core.settings import Settings, get_settings
from mlops_core.stranded_pipelines import enqueue_stranded
from mlops_core.token_vault import InvalidSecretKey, TokenVault

log = logging.getLogger("gateway")

DESCRIPTION = """
Register a GitHub repository holding a training notebook; every push that changes the
notebook runs a pipeline (clone, validate, execute, convert to ONNX, verify, register in MLflow,
roll out to the inference fleet). Follow it live on `/ws/pipelines/{id}/logs`, predict over
REST here or over gRPC (Open Inference Protocol v2) on the fleet, and roll back in one call.

Every error answers `{"detail": "..."}`; a 422 names each field and its problem without
echoing what was sent. Bodies larger than `MLOPS_MAX_PREDICT_BYTES` (the webhook:
`MLOPS_MAX_WEBHOOK_BYTES`) answer 413. With `MLOPS_API_KEY` set, every route but `/health`,
`/ready`, `/v2/health/*` and `/webhook/github` needs `Authorization: Bearer <key>`.

`/v2/...` speaks the Open Inference Protocol (KServe v2) over REST, with Triton's binary tensor
data extension, so `tritonclient.http` and other v2 clients work unchanged; its errors answer
`{"error": "..."}` as that protocol has them.
"""


def check_settings(settings: Settings) -> None:
    """Refuse unsafe settings before anything starts."""
    if not settings.github_webhook_secret and not settings.dev_mode:
        raise ConfigError(
            "GITHUB_WEBHOOK_SECRET is empty: set it (the secret configured on the GitHub "
            "webhook), or set MLOPS_DEV_MODE=true to accept unsigned webhooks in development"
        )
    if settings.secret_key:
        try:
            TokenVault(settings.secret_key, "MLOPS_SECRET_KEY")
        except InvalidSecretKey as exc:
            raise ConfigError(str(exc)) from None


async def requeue_stranded(resources: Resources) -> None:
    """Queue the pipelines recorded as `queued` whose job Redis does not hold (it was away
    when they were recorded, or restarted empty); the workers' sweep does the same every 15 s."""
    try:
        queued = await enqueue_stranded(resources.arq, resources.sessions)
    except (RedisError, OSError) as exc:
        log.warning("stranded pipelines not swept at start: Redis is away (%s)", exc)
        return
    if queued:
        log.warning("queued again pipelines Redis did not hold: %s", ", ".join(queued))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    check_settings(settings)
    if not settings.api_key:
        log.warning("MLOPS_API_KEY is not set: the API is open to anyone who can reach it")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_resources(settings) as resources:
            app.state.resources = resources
            await requeue_stranded(resources)
            gc_tuning.tune_for_serving()
            yield

    app = FastAPI(
        title="MLOps Platform gateway",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    # Prediction rows are the largest body any route takes: every route is held to their
    # limit, but the webhook, which has its own.
    app.add_middleware(
        RequestBodyLimit,
        default=BodyLimit(settings.max_predict_bytes, "MLOPS_MAX_PREDICT_BYTES"),
        by_path={
            "/webhook/github": BodyLimit(settings.max_webhook_bytes, "MLOPS_MAX_WEBHOOK_BYTES")
        },
    )
    protected = [Depends(require_api_key)]
    app.include_router(system.router)
    app.include_router(webhook.router)
    app.include_router(repos.router, dependencies=protected)
    app.include_router(pipelines.router, dependencies=protected)
    app.include_router(models.router, dependencies=protected)
    app.include_router(rollouts.router, dependencies=protected)
    app.include_router(v2.health_router)  # open, as /health and /ready are
    app.include_router(v2.router, dependencies=protected)
    app.include_router(ws.router)  # checks the key itself: browsers cannot send headers there
    dashboard.install(app)  # public: the page holds no data, the API calls it makes need the key
    return app


def __getattr__(name: str) -> FastAPI:
    # NOTE: built on first access rather than at import, so importing this module (tests,
    # tools) never needs the production settings; `uvicorn gateway.app:app` still finds it.
    if name == "app":
        return create_app()
    raise AttributeError(name)
