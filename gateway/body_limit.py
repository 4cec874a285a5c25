"""Request body limits: a body past its route's limit answers 413 and is never read whole."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import error_answer
from mlops_core.errors import MessageTooLarge


@dataclass(frozen=True)
class BodyLimit:
    max_bytes: int
    setting: str
    """The environment variable that sets it, named in the 413 so an operator knows."""

    @property
    def message(self) -> str:
        return f"request body exceeds {self.max_bytes} bytes ({self.setting})"


class RequestBodyLimit:
    """ASGI middleware: a declared Content-Length past the limit is refused before the app
    runs (not one byte read), and a chunked body as soon as it grows past it.

    NOTE: FastAPI's own `max_body_size` does the same but answers a declared oversize body
    with plain text; every answer of this API is `{"detail": ...}` (`{"error": ...}` on `/v2`).
    """

    def __init__(self, app: ASGIApp, default: BodyLimit, by_path: Mapping[str, BodyLimit]) -> None:
        self.app = app
        self.default = default
        self.by_path = dict(by_path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.by_path.get(scope["path"], self.default)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit.max_bytes:
            answer = error_answer(scope["path"], MessageTooLarge.http_status, limit.message)
            await answer(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.max_bytes:
                    # A Starlette HTTPException passes through FastAPI's body parsing as is
                    # (anything else would become a 400) to the one error handler.
                    raise HTTPException(MessageTooLarge.http_status, limit.message)
            return message

        await self.app(scope, limited_receive, send)
