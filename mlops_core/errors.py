"""Every error a client can meet, each with its HTTP status and gRPC code: the one place they
are defined. Each transport maps them once: the gateway's REST handlers answer `http_status`,
the inference servicer aborts with `grpc_code`, the WebSocket closes with 4000 + `http_status`.

A 4xx (and its gRPC code) says the caller can fix the request; a 5xx says the fault is ours
or a service's we rely on, and the message says which.
"""

from __future__ import annotations

import grpc

RETRY_AFTER_METADATA = "retry-after-ms"
"""gRPC trailing metadata carrying an error's `retry_after_ms`."""


class MlopsError(Exception):
    """Base of every error a user or client can cause or act on."""

    http_status: int = 500
    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retry_after_ms: int | None = None
    """When set, the caller may retry after this long: sent as trailing metadata
    `retry-after-ms` over gRPC and as a `Retry-After` header (whole seconds) over REST."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- the caller's to fix (4xx) ---------------------------------------------------------------
class InvalidInput(MlopsError):
    """The request is malformed: wrong shape, datatype, byte length or value (NaN and
    infinities included); the message names the input and what the model expects."""

    http_status = 422
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthorized(MlopsError):
    """No API key, or the wrong one."""

    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class NotFound(MlopsError):
    """Base of the errors for a thing that does not exist."""

    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class ModelNotFound(NotFound):
    """No such model, or no such version of it."""


class RepositoryNotFound(NotFound):
    """No registered repository has this id."""


class PipelineNotFound(NotFound):
    """No pipeline has this id."""


class Conflict(MlopsError):
    """The request contradicts the current state (registered already, ended already, ...)."""

    http_status = 409
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class TokenUnreadable(MlopsError):
    """A stored token cannot be opened with the current key (the key changed or was lost)."""

    http_status = 409
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class MessageTooLarge(MlopsError):
    """The request body or message is larger than the configured limit."""

    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ModelLoadError(MlopsError):
    """A model version could not be loaded or warmed; the active version keeps serving."""

    http_status = 422
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class PipelineError(MlopsError):
    """A pipeline stage failed with a message the data scientist can act on."""

    http_status = 422
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


# --- ours, or a service's we rely on (5xx) ----------------------------------------------------
class InternalError(MlopsError):
    """A fault of ours, not of the request: the message says so, the service's log has the
    details (a traceback never reaches the client)."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL


class ModelRuntimeError(InternalError):
    """A model version failed while running on an input that passed validation: the model's
    (or onnxruntime's) fault, not the caller's."""


class UpstreamError(MlopsError):
    """A service the gateway relies on (the git host, the inference fleet) failed."""

    http_status = 502
    grpc_code = grpc.StatusCode.UNAVAILABLE


class ServiceUnavailable(MlopsError):
    """A backing service (Redis, the database) is down; the request can be retried."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class ModelNotReady(MlopsError):
    """The model exists but cannot serve yet (loading, or no replica serves it)."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class ModelNotResident(ModelNotReady):
    """A version this replica serves is not in its memory (its memory budget evicted it, or
    never had room for it), and loading it did not finish within the cold-load wait, or the
    budget could not be freed (every resident version was in flight or pinned). Retry later,
    or on another replica."""

    def __init__(self, message: str, retry_after_ms: int = 1000) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class MlflowUnreachable(MlopsError):
    """MLflow did not answer within the pipeline's retry budget."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class UpstreamTimeout(UpstreamError):
    """A service the gateway relies on did not answer in time."""

    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class RolloutTimeout(MlopsError):
    """Not every live replica reported the desired version in time."""

    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
