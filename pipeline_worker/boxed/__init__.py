"""Entry points that run inside a box (`python -m pipeline_worker.boxed.<name>`).

They talk to the worker only through their output lines and the files they leave in the box's
work directory. An event is one line: `EVENT_PREFIX` then a JSON object; any other line is
plain output. Boxed code shares this stream with the code it runs, so the worker treats every
event as a claim to check, never as proof.
"""

from __future__ import annotations

import json
import sys
from typing import Any

EVENT_PREFIX = "@@mlops-event "
# A claim longer than this is not an event of ours (the worker keeps it as plain output).
MAX_EVENT_CHARS = 256 * 1024


def emit(kind: str, **fields: Any) -> None:
    sys.stdout.write(EVENT_PREFIX + json.dumps({"kind": kind, **fields}, default=str) + "\n")
    sys.stdout.flush()


def parse_event(line: str) -> dict[str, Any] | None:
    """The event a line carries, or None for plain output."""
    if not line.startswith(EVENT_PREFIX) or len(line) > MAX_EVENT_CHARS:
        return None
    try:
        event = json.loads(line[len(EVENT_PREFIX) :])
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("kind"), str):
        return None
    return event
