"""A replica's retry hint (a version not in its memory) reaches a REST client as Retry-After."""

from __future__ import annotations

import grpc
import httpx
from fastapi import FastAPI

from gateway.errors import install_error_handlers
from gateway.fleet_client import map_rpc_error
from mlops_core.errors import RETRY_AFTER_METADATA, ModelNotReady


def unavailable(trailing: tuple[tuple[str, str], ...]) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*trailing),
        details="model 'm' version '1' is loading on this replica",
    )


async def answer(error: Exception) -> tuple[int, dict[str, str]]:
    """The gateway's answer to a route that raises `error`."""
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/predict")
    def predict() -> None:
        raise error

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        response = await client.get("/predict")
    return response.status_code, dict(response.headers)


async def test_a_retry_hint_becomes_retry_after_in_whole_seconds():
    error = map_rpc_error("m", unavailable(((RETRY_AFTER_METADATA, "100"),)))
    assert isinstance(error, ModelNotReady) and error.retry_after_ms == 100
    status, headers = await answer(error)
    assert status == 503 and headers["retry-after"] == "1"


async def test_no_hint_no_retry_after():
    error = map_rpc_error("m", unavailable(()))
    assert error.retry_after_ms is None
    status, headers = await answer(error)
    assert status == 503 and "retry-after" not in headers
