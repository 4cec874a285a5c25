"""The replica's API key check: with `MLOPS_API_KEY` set, every RPC but the health ones needs
`authorization: Bearer <key>` metadata, as the gateway's REST API needs the header.

NOTE: the gRPC server asks it only when a key is set, so a replica without one pays nothing.
With one, a call costs a scan of its few metadata entries and a constant-time comparison: no
allocation of our own.
"""

from __future__ import annotations

import hmac
from typing import Any

from grpc_health.v1 import health_pb2

from inference.grpc_server import Metadata
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


class ApiKeyCheck:
    """Whether a call's metadata carries `authorization: Bearer <key>`."""

    def __init__(self, api_key: str) -> None:
        # NOTE: gRPC metadata values are printable ASCII; another key could never be sent.
        if not api_key or not (api_key.isascii() and api_key.isprintable()):
            raise ValueError("MLOPS_API_KEY must be printable ASCII to travel in gRPC metadata")
        self._expected = f"Bearer {api_key}"

    def __call__(self, metadata: Metadata) -> bool:
        for key, value in metadata:
            if key == "authorization":
                # NOTE: compare_digest refuses non-ASCII str; such a value is wrong anyway.
                return (
                    isinstance(value, str)
                    and value.isascii()
                    and hmac.compare_digest(value, self._expected)
                )
        return False
