"""The gateway's REST error mapping: the one place every error becomes `{"detail": ...}`
with the HTTP status its class in `mlops_core.errors` carries (on the Open Inference Protocol's
`/v2` routes, `{"error": ...}`: see `error_answer`)."""

from __future__ import annotations

import logging
import math
import reprlib
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection

from mlops_core.errors import InternalError, MlopsError, PipelineError, ServiceUnavailable

log = logging.getLogger("gateway")

REDIS_AWAY = "Redis (the job queue and the log stream) is unreachable: retry once it is back"


class ConfigError(RuntimeError):
    """The settings are unsafe or incomplete: the gateway refuses to start (never reaches a
    client, so it is not an MlopsError)."""


def client_error(connection: HTTPConnection, exc: BaseException) -> MlopsError:
    """What a client is told of `exc`: itself when it is one of ours, ServiceUnavailable when
    Redis is away, else an InternalError (the traceback goes to the gateway's log only).
    REST and the WebSocket both answer through this."""
    if isinstance(exc, MlopsError):
        return exc
    if isinstance(exc, RedisError):
        return ServiceUnavailable(REDIS_AWAY)
    method = connection.scope.get("method", "WebSocket")
    log.error("unhandled error on %s %s", method, connection.url.path, exc_info=exc)
    return InternalError("internal error; the gateway log has the details")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(MlopsError, _error_answer)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _error_answer)


def error_response(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


OIP_PREFIX = "/v2"
"""The Open Inference Protocol's REST routes (`gateway.routes.v2`)."""


def speaks_oip(path: str) -> bool:
    return path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/")


def error_answer(path: str, status: int, detail: str, **extra: Any) -> JSONResponse:
    """The error answer for a request to `path`: ours, or the Open Inference Protocol's.

    NOTE: the OIP REST spec (and Triton, whose clients read it) answers every failure as
    `{"error": "<message>"}` and a request it cannot take as 400: it has no 422, so our 422s
    (InvalidInput, a path parameter FastAPI refused) are 400 there. Every other status is the
    one the error's class carries.
    """
    if speaks_oip(path):
        return JSONResponse({"error": detail}, status_code=400 if status == 422 else status)
    return error_response(status, detail, **extra)


async def _error_answer(request: Request, exc: Exception) -> JSONResponse:
    exc = client_error(request, exc)
    extra = {"stage": exc.stage} if isinstance(exc, PipelineError) else {}
    headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else {}
    if exc.retry_after_ms is not None:
        headers["Retry-After"] = str(math.ceil(exc.retry_after_ms / 1000))  # whole seconds
    response = error_answer(request.url.path, exc.http_status, exc.message, **extra)
    if headers:
        response.headers.update(headers)
    return response


PREVIEW_CHARS = 100
"""The most of a submitted value (or of a name a client chose) an error answer repeats."""
MAX_LISTED_ERRORS = 10
"""Validation errors listed one by one; a body can hold millions, the rest are counted."""

# NOTE: reprlib looks at a bounded part of the value (a string's first characters, a list's
# first items), so previewing a value of many megabytes costs next to nothing.
_preview_repr = reprlib.Repr()
_preview_repr.maxlevel = 2
_preview_repr.maxstring = _preview_repr.maxother = PREVIEW_CHARS
_preview_repr.maxlist = _preview_repr.maxtuple = 8
_preview_repr.maxdict = 4


def preview(value: object) -> str:
    """A short repr of a value a client sent, for an error message: at most PREVIEW_CHARS."""
    return _clip(_preview_repr.repr(value), PREVIEW_CHARS)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    # NOTE: pydantic's errors carry the submitted `input` (and `ctx`, `url`); they are left out
    # so a 422 never echoes a big body back. Names in `loc` can come from the client too
    # (an unexpected key), so they are clipped like values.
    assert isinstance(exc, RequestValidationError)
    found = exc.errors()
    errors = [
        {
            "loc": [_clip(str(p), PREVIEW_CHARS) for p in e.get("loc", ())],
            "msg": _message(e),
            "type": e.get("type"),
        }
        for e in found[:MAX_LISTED_ERRORS]
    ]
    detail = "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in errors) or "invalid request"
    if len(found) > MAX_LISTED_ERRORS:
        detail += f"; and {len(found) - MAX_LISTED_ERRORS} more errors"
    return error_answer(request.url.path, 422, detail, errors=errors)


def _message(error: Any) -> str:
    message = str(error.get("msg", ""))
    reason = (error.get("ctx") or {}).get("error")
    if error.get("type") == "json_invalid" and isinstance(reason, str):
        message = f"{message}: {reason}"  # "JSON decode error: Expecting value"
    # A validator's own message may quote the value it refused.
    return _clip(message, 2 * PREVIEW_CHARS)


def _where(loc: list[str]) -> str:
    # ["body", "data", "0", "1"] reads better as "body.data[0][1]"
    out = ""
    for part in loc:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    response = error_answer(request.url.path, exc.status_code, str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response
