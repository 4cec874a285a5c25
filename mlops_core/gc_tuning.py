"""Garbage-collector settings for long-running servers on a request hot path."""

from __future__ import annotations

import gc

# NOTE: the default first-generation threshold (700 allocations) runs a collection every few
# requests on a busy server, and the gateway's profiles showed the collector among its largest
# costs (benchmarks/README.md, "What changed, and what each change bought"). Requests allocate
# mostly acyclic, short-lived objects that reference counting frees, so a far higher threshold
# costs little memory.
YOUNG_THRESHOLD = 50_000


def tune_for_serving() -> None:
    """Call once start-up is done: move everything allocated so far out of the collector's
    sight (it lives as long as the process) and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 20, 20)
