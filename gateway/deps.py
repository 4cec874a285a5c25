"""The gateway's long-lived resources and the typed dependencies routes declare."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Concatenate, ParamSpec, TypeVar

import httpx
from arq.connections import ArqRedis
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis.asyncio import Redis
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from gateway import store
from gateway.fleet_client import FleetClient
from gateway.model_catalog import Registry
from mlops_core import pipeline_queue
from mlops_core.db import checkpoint, make_engine, make_session_factory, session_scope
from mlops_core.errors import Unauthorized
from mlops_core.settings import Settings
from mlops_core.token_vault import TokenVault

P = ParamSpec("P")
T = TypeVar("T")
log = logging.getLogger("gateway")


@dataclass
class Resources:
    """Connections opened once at startup and shared by every request."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    redis: Redis
    arq: ArqRedis
    fleet: FleetClient
    registry: Registry
    vault: TokenVault
    """Seals repository tokens before they are stored; opens them for `git ls-remote`."""

    async def db(
        self, work: Callable[Concatenate[Session, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `work(session, ...)` in one transaction, in the threadpool."""

        def run() -> T:
            with session_scope(self.sessions) as session:
                return work(session, *args, **kwargs)

        return await run_in_threadpool(run)


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set; the gateway needs Redis")
    assert settings.database_url is not None  # resolved by Settings
    vault = TokenVault.from_settings(settings)
    engine = make_engine(settings.database_url)
    redis = Redis.from_url(settings.redis_url)
    arq = await pipeline_queue.connect(settings.redis_url)
    # NOTE: the gRPC aio channel binds to the running event loop, so it is created here.
    fleet = FleetClient(
        settings.fleet_address,
        settings.max_message_bytes,
        settings.predict_batches_in_flight,
        api_key=settings.api_key,
    )
    http = httpx.AsyncClient()
    try:
        resources = Resources(
            settings=settings,
            engine=engine,
            sessions=make_session_factory(engine),
            redis=redis,
            arq=arq,
            fleet=fleet,
            registry=Registry(http, settings.mlflow_tracking_uri.rstrip("/")),
            vault=vault,
        )
        if sealed := await resources.db(store.seal_legacy_tokens, vault):
            await run_in_threadpool(checkpoint, engine)
            log.warning("sealed %d repository tokens an older version stored in plain text", sealed)
        yield resources
    finally:
        await fleet.close()
        await http.aclose()
        await arq.aclose()
        await redis.aclose()
        engine.dispose()


async def get_resources(connection: HTTPConnection) -> Resources:
    # NOTE: async so FastAPI calls it on the event loop, not through the threadpool.
    resources: Resources = connection.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="MLOPS_API_KEY",
    description="`Authorization: Bearer <MLOPS_API_KEY>`, when the gateway has a key set",
)


def check_api_key(settings: Settings, presented: str | None) -> None:
    """Accept when no key is configured or the presented one matches (in constant time)."""
    if not settings.api_key:
        return
    if presented is None:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <MLOPS_API_KEY>'")
    if not hmac.compare_digest(presented.encode(), settings.api_key.encode()):
        raise Unauthorized("invalid API key")


async def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    settings: Settings = request.app.state.settings
    check_api_key(settings, credentials.credentials if credentials else None)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
