"""Our errors as gRPC statuses: the replica's one mapping, used by the servicer and the API
key check. Each MlopsError answers its class's `grpc_code` and its message; anything else
is a fault of the replica, answered INTERNAL with a message that says so, never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any, NoReturn, TypeVar

from inference.grpc_server import CallContext
from mlops_core.errors import RETRY_AFTER_METADATA, InternalError, MlopsError

log = logging.getLogger(__name__)

Response = TypeVar("Response")


def as_mlops_error(exc: Exception, method: str) -> MlopsError:
    """`exc` itself when it is one of ours; anything else is a fault of this replica, logged
    here with its traceback and told to the client as an InternalError without it."""
    if isinstance(exc, MlopsError):
        return exc
    log.error("%s failed unexpectedly", method, exc_info=exc)
    return InternalError(
        f"{method} failed inside the inference replica: a server fault, not a problem with "
        "the request; the replica's log has the details"
    )


def abort(context: CallContext, error: MlopsError) -> NoReturn:
    """End the call with the error's gRPC code and message, and its retry hint if it has one
    (trailing metadata `retry-after-ms`)."""
    if error.retry_after_ms is not None:
        context.set_trailing_metadata(((RETRY_AFTER_METADATA, str(error.retry_after_ms)),))
    context.abort(error.grpc_code, error.message)


def answers_errors(handler: Callable[..., Response]) -> Callable[..., Response]:
    """A servicer method whose every exception ends the call through `abort`."""

    @wraps(handler)
    def wrapper(self: Any, request: Any, context: CallContext) -> Response:
        try:
            return handler(self, request, context)
        except Exception as exc:
            abort(context, as_mlops_error(exc, handler.__name__))

    return wrapper
