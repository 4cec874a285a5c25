"""The gateway's own errors and the one place every error becomes `{"detail": ...}`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlops_core.errors import MlopsError, PipelineError

log = logging.getLogger("gateway")


class UpstreamError(MlopsError):
    """A service the gateway relies on (the git host, the inference fleet) failed."""

    http_status = 502


class UpstreamTimeout(MlopsError):
    http_status = 504


class ConfigError(RuntimeError):
    """The settings are unsafe or incomplete: the gateway refuses to start."""


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(MlopsError, _mlops_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)


def error_response(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


async def _mlops_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MlopsError)
    extra = {"stage": exc.stage} if isinstance(exc, PipelineError) else {}
    headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
    response = error_response(exc.http_status, exc.message, **extra)
    if headers:
        response.headers.update(headers)
    return response


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type")}
        for e in exc.errors()
    ]
    detail = "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in errors) or "invalid request"
    return error_response(422, detail, errors=errors)


def _where(loc: list[str]) -> str:
    # ["body", "data", "0", "1"] reads better as "body.data[0][1]"
    out = ""
    for part in loc:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    response = error_response(exc.status_code, str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error; the gateway log has the details")


class ServiceUnavailable(MlopsError):
    """A backing service (Redis, the database) is down; the request can be retried."""

    http_status = 503
