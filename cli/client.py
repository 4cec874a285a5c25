"""The gateway as the command line sees it: one HTTP client, its errors turned into a message
and an exit code, and the pipeline log WebSocket followed across reconnects."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

DEFAULT_GATEWAY = "http://localhost:8000"
TIMEOUT_S = 60.0
"""Generous: a rollback answers once every replica serves the version (MLOPS_DEPLOY_TIMEOUT_S)."""
RECONNECT_WINDOW_S = 120.0
"""How long `logs -f` keeps trying to reconnect before giving up (a gateway restart takes a few
seconds; a deploy may restart it under a busy machine's load)."""
RETRY_CLOSE_CODES = {1001, 1006, 1011, 1012, 1013, 4500, 4503}
"""WebSocket closes worth reconnecting after: the gateway going away or restarting, Redis away."""
END_OK = "succeeded"


class GatewayError(Exception):
    """What went wrong, as the user should read it; `exit_code` for the process."""

    def __init__(self, message: str, exit_code: int = 1, body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.body = body
        """The error answer's JSON, when it had one."""


class Gateway:
    """The gateway at `url`, with the API key (never shown) when one is given."""

    def __init__(self, url: str, api_key: str | None) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=self._headers, timeout=TIMEOUT_S)

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The answer's JSON (None for an empty body); GatewayError on an error answer."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from exc
        if response.status_code >= 400:
            raise GatewayError(error_message(response), body=json_or_none(response))
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    def unreachable(self, exc: BaseException) -> GatewayError:
        reason = str(exc) or type(exc).__name__
        return GatewayError(f"cannot reach the gateway at {self.url}: {reason}")

    def follow_logs(self, pipeline_id: str, show: Callable[[dict[str, Any]], None]) -> str:
        """Show each log entry once, reconnecting when the connection drops; the end status."""
        return asyncio.run(self._follow(pipeline_id, show))

    async def _follow(self, pipeline_id: str, show: Callable[[dict[str, Any]], None]) -> str:
        ws_url = "ws" + self.url.removeprefix("http") + f"/ws/pipelines/{pipeline_id}/logs"
        last_seq = 0
        lost_since: float | None = None
        while True:
            try:
                async with websockets.connect(ws_url, additional_headers=self._headers) as ws:
                    async for message in ws:
                        # NOTE: reset on a message, not on connecting: a gateway that accepts and
                        # closes at once still runs out the reconnect window.
                        lost_since = None
                        entry = json.loads(message)
                        if "end" in entry:
                            return str(entry["end"])
                        # NOTE: a reconnect replays the log from its start: skip what was shown.
                        if entry["seq"] > last_seq:
                            show(entry)
                            last_seq = entry["seq"]
                    closed = ws.close_code, ws.close_reason
            except ConnectionClosed as exc:
                closed = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (1006, "")
            except InvalidStatus as exc:
                raise GatewayError(
                    f"the gateway at {self.url} refused the log stream: HTTP"
                    f" {exc.response.status_code}"
                ) from exc
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                closed = (1006, str(exc) or type(exc).__name__)
            code, reason = closed
            if code is not None and code >= 4000 and code not in RETRY_CLOSE_CODES:
                raise GatewayError(reason or f"the log stream closed with code {code}")
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > RECONNECT_WINDOW_S:
                raise GatewayError(
                    f"cannot reach the gateway at {self.url}: lost the log stream of pipeline"
                    f" {pipeline_id} for {RECONNECT_WINDOW_S:.0f} s ({reason or code})"
                )
            await asyncio.sleep(0.5)


def json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def error_message(response: httpx.Response) -> str:
    """The server's own message (`{"detail": ...}`), else the status and body."""
    body = json_or_none(response)
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str) and detail:
        return detail
    if detail is not None:
        return json.dumps(detail)
    return f"HTTP {response.status_code}: {response.text[:300] or response.reason_phrase}"
