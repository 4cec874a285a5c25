"""Our error types, each carrying its HTTP status and gRPC code: the one place they are mapped."""

from __future__ import annotations

import grpc


class MlopsError(Exception):
    """Base of every error a user or client can cause or act on."""

    http_status: int = 500
    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(MlopsError):
    """The request is malformed: wrong shape, datatype, byte length or value."""

    http_status = 422
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class MessageTooLarge(MlopsError):
    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotFound(MlopsError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class ModelNotFound(NotFound):
    """No such model, or no such version of it."""


class RepositoryNotFound(NotFound):
    pass


class PipelineNotFound(NotFound):
    pass


class Conflict(MlopsError):
    http_status = 409
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class Unauthorized(MlopsError):
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class ModelNotReady(MlopsError):
    """The model exists but cannot serve yet (loading, or no replica serves it)."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class ModelLoadError(MlopsError):
    """A model version could not be loaded or warmed; the active version keeps serving."""

    http_status = 422
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class RolloutTimeout(MlopsError):
    """Not every live replica reported the desired version in time."""

    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class PipelineError(MlopsError):
    """A pipeline stage failed with a message the data scientist can act on."""

    http_status = 422
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage
