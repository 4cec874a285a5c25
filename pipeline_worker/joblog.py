"""A pipeline's log as its worker writes it: stage-prefixed, secret-free lines in Redis."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from redis.asyncio import Redis

from mlops_core import logstream
from pipeline_worker.scrub import Redactor

logger = logging.getLogger(__name__)

MAX_LINE_CHARS = 4000
# A notebook that prints in a loop must not fill Redis; past this, lines are counted only.
MAX_LINES = 20_000


class PipelineLog:
    """Writes `[stage] text` lines to the pipeline's Redis list and channel."""

    def __init__(self, redis: Redis, pipeline_id: str, redact: Redactor) -> None:
        self.redis = redis
        self.pipeline_id = pipeline_id
        self.redact = redact
        self.stage = "queued"
        self._written = 0
        self._dropped = 0

    async def write(self, text: str, stage: str | None = None) -> None:
        """Append each line of `text` (secrets masked, long lines cut)."""
        prefix = f"[{stage or self.stage}] "
        for raw in self.redact(text).splitlines() or [""]:
            line = raw if len(raw) <= MAX_LINE_CHARS else raw[:MAX_LINE_CHARS] + " [...]"
            if self._written >= MAX_LINES:
                self._dropped += 1
                continue
            self._written += 1
            await logstream.append_line(self.redis, self.pipeline_id, prefix + line)

    async def transcript(self) -> str:
        """The whole log, one timestamped line per entry (the last one the kept-lines count)."""
        if self._dropped:
            await logstream.append_line(
                self.redis,
                self.pipeline_id,
                f"[{self.stage}] {self._dropped} further lines were not kept (limit {MAX_LINES})",
            )
        entries = await logstream.history(self.redis, self.pipeline_id)
        return "\n".join(
            f"{datetime.fromtimestamp(e['ts'], UTC).strftime('%H:%M:%S.%f')[:-3]} {e['line']}"
            for e in entries
            if "line" in e
        )

    async def end(self, status: str) -> None:
        """Mark the terminal state: watchers receive it and stop following."""
        await logstream.mark_end(self.redis, self.pipeline_id, status)
