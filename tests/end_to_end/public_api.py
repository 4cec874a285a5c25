"""The stack's public interfaces as a user's client sees them: the gateway's WebSocket log,
REST predictions (one at a time and as a continuous load), and native gRPC via tritonclient."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets

from benchmarks.processes import REPO_ROOT


@dataclass
class LogWatch:
    entries: list[dict[str, Any]]
    arrivals: list[float]
    """time.monotonic() at which each entry arrived."""
    close_code: int | None

    @property
    def end(self) -> str | None:
        return self.entries[-1].get("end") if self.entries else None

    @property
    def lines(self) -> list[str]:
        return [e["line"] for e in self.entries if "line" in e]


async def watch_pipeline(gateway: str, pipeline_id: str, timeout_s: float) -> LogWatch:
    """Every message of `/ws/pipelines/{id}/logs` until the gateway closes it."""
    url = gateway.replace("http://", "ws://", 1) + f"/ws/pipelines/{pipeline_id}/logs"
    watch = LogWatch([], [], None)
    async with websockets.connect(url) as ws:
        async with asyncio.timeout(timeout_s):
            async for message in ws:
                watch.arrivals.append(time.monotonic())
                watch.entries.append(json.loads(message))
        watch.close_code = ws.close_code
    return watch


def grpc_predict(address: str, model: str, rows: list[list[float]]) -> dict[str, Any]:
    """One ModelInfer through tritonclient.grpc, run in a child process: its protobuf
    registrations clash with our stubs' in one process."""
    spec = json.dumps({"url": address, "model": model, "rows": rows})
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.triton_probe", spec],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@dataclass
class Answer:
    sent: float
    received: float
    status: int | None
    """None when the request failed below HTTP (connection refused, reset, timeout)."""
    version: str | None
    error: str | None = None


@dataclass
class LoadRun:
    answers: list[Answer] = field(default_factory=list)
    action_started: float = 0.0
    action_done: float = 0.0
    action_result: Any = None

    def failures(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 200]


async def predict_load_around(
    gateway: str,
    model: str,
    rows: list[list[float]],
    action: Callable[[httpx.AsyncClient], Awaitable[Any]],
    *,
    clients: int,
    before_s: float,
    after_s: float,
    limit_s: float,
) -> LoadRun:
    """`clients` concurrent clients predict back to back; after `before_s` of load, run
    `action`; keep loading `after_s` more, all within `limit_s`. Every answer is recorded."""
    run = LoadRun()
    stop = asyncio.Event()
    body = {"data": rows}

    async def client_loop() -> None:
        async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    response = await client.post(f"/models/{model}/predict", json=body)
                except httpx.HTTPError as exc:
                    run.answers.append(
                        Answer(sent, time.monotonic(), None, None, f"{type(exc).__name__}: {exc}")
                    )
                    continue
                version = response.json().get("version") if response.status_code == 200 else None
                error = None if response.status_code == 200 else response.text
                run.answers.append(
                    Answer(sent, time.monotonic(), response.status_code, version, error)
                )

    async def drive() -> None:
        await asyncio.sleep(before_s)
        async with httpx.AsyncClient(base_url=gateway, timeout=limit_s) as client:
            run.action_started = time.monotonic()
            run.action_result = await action(client)
            run.action_done = time.monotonic()
        await asyncio.sleep(after_s)
        stop.set()

    loops = [asyncio.create_task(client_loop()) for _ in range(clients)]
    try:
        async with asyncio.timeout(limit_s):
            await drive()
            await asyncio.gather(*loops)
    finally:
        stop.set()
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
    return run
