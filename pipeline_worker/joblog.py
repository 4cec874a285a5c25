"""A pipeline's log as its worker writes it: stage-prefixed, secret-free lines in Redis.

Two kinds of lines: the platform's own (`write`: stage starts and ends, cell starts and ends,
the final state), which are kept for good, and the notebook's output (`write_output`), of which
the log keeps the first and the last lines however much is printed (see `logstream`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from redis.asyncio import Redis

from mlops_core import logstream
from mlops_core.logstream import DEFAULT_BOUNDS, LogBounds
from pipeline_worker.scrub import Redactor

MAX_LINE_CHARS = 4000


class PipelineLog:
    """Writes `[stage] text` lines to the pipeline's Redis log and channel."""

    def __init__(
        self, redis: Redis, pipeline_id: str, redact: Redactor, bounds: LogBounds = DEFAULT_BOUNDS
    ) -> None:
        self.redis = redis
        self.pipeline_id = pipeline_id
        self.redact = redact
        self.bounds = bounds
        self.stage = "queued"

    async def write(self, text: str, stage: str | None = None) -> None:
        """Append each line of `text` as a platform line: never dropped from the log."""
        await self._append(text, stage, output=False)

    async def write_output(self, text: str, stage: str | None = None) -> None:
        """Append each line of `text` as notebook output: kept if among the first or last."""
        await self._append(text, stage, output=True)

    async def _append(self, text: str, stage: str | None, *, output: bool) -> None:
        stage = stage or self.stage
        lines = [
            f"[{stage}] " + (raw if len(raw) <= MAX_LINE_CHARS else raw[:MAX_LINE_CHARS] + " [...]")
            for raw in self.redact(text).splitlines() or [""]
        ]
        await logstream.append_lines(
            self.redis, self.pipeline_id, lines, output=output, stage=stage, bounds=self.bounds
        )

    async def transcript(self) -> str:
        """The log as kept, one timestamped line per entry (gaps say what was dropped)."""
        entries = await logstream.history(self.redis, self.pipeline_id)
        return "\n".join(
            f"{datetime.fromtimestamp(e['ts'], UTC).strftime('%H:%M:%S.%f')[:-3]} {e['line']}"
            for e in entries
            if "line" in e
        )

    async def end(self, status: str) -> None:
        """Mark the terminal state: watchers receive it and stop following."""
        await logstream.mark_end(self.redis, self.pipeline_id, status, bounds=self.bounds)
