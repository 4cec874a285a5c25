"""Cancellation of a running pipeline (requested through `pipeline_queue.request_cancel`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

CancelCheck = Callable[[], Awaitable[bool]]


class PipelineCancelled(Exception):
    """A cancel request was seen; the pipeline ends `cancelled`."""
