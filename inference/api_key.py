"""The replica's API key check: with `MLOPS_API_KEY` set, every RPC but the health ones needs
`authorization: Bearer <key>` metadata, as the gateway's REST API needs the header.

NOTE: a server interceptor, installed only when a key is set, so a replica without one pays
nothing. With one, a call costs a set lookup, a scan of its few metadata entries and a
constant-time comparison: no allocation of our own.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from inference.grpc_status import abort
from mlops_core.errors import Unauthorized
from mlops_core.protocol import open_inference_pb2 as pb

REFUSAL = "missing or wrong API key: send metadata 'authorization: Bearer <MLOPS_API_KEY>'"


def _full_names(service: Any, methods: list[str] | None = None) -> set[str]:
    return {
        f"/{service.full_name}/{m.name}"
        for m in service.methods
        if methods is None or m.name in methods
    }


OPEN_METHODS = frozenset(
    _full_names(health_pb2.DESCRIPTOR.services_by_name["Health"])
    | _full_names(
        pb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
        ["ServerLive", "ServerReady", "ModelReady"],
    )
)
"""Health-like RPCs: orchestrators and load balancers probe them without credentials."""


def _refuse(request: bytes, context: grpc.ServicerContext) -> None:
    abort(context, Unauthorized(REFUSAL))


class ApiKeyInterceptor(grpc.ServerInterceptor):
    """Answers UNAUTHENTICATED to any call outside OPEN_METHODS without the bearer key."""

    def __init__(self, api_key: str) -> None:
        # NOTE: gRPC metadata values are printable ASCII; another key could never be sent.
        if not api_key or not (api_key.isascii() and api_key.isprintable()):
            raise ValueError("MLOPS_API_KEY must be printable ASCII to travel in gRPC metadata")
        self._expected = f"Bearer {api_key}"
        # Every protected RPC is unary-unary; one prebuilt handler refuses them all.
        self._refusal: grpc.RpcMethodHandler[bytes, None] = grpc.unary_unary_rpc_method_handler(
            _refuse
        )

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        if handler_call_details.method in OPEN_METHODS or self._authorized(
            handler_call_details.invocation_metadata
        ):
            return continuation(handler_call_details)
        return self._refusal

    def _authorized(self, metadata: tuple[tuple[str, str | bytes], ...]) -> bool:
        for key, value in metadata:
            if key == "authorization":
                # NOTE: compare_digest refuses non-ASCII str; such a value is wrong anyway.
                return (
                    isinstance(value, str)
                    and value.isascii()
                    and hmac.compare_digest(value, self._expected)
                )
        return False
