"""grpc core's own settings for a replica, applied before grpc is first imported."""

from __future__ import annotations

import os

SERVER_EXPERIMENTS = "-event_engine_listener,-event_engine_for_all_other_endpoints"
"""grpc core's experiments a replica turns off unless GRPC_EXPERIMENTS says otherwise.

NOTE: with them on (grpcio's default), sockets are read and written by EventEngine's own
threads, which then wake the thread polling the completion queue: one more thread hop per
event. Off, the polling thread does the I/O itself. Measured with h2load on one pinned replica,
alternating runs: 64-row RF at 16 clients 1,694 / 2,313 / 2,270 -> 2,462 / 2,444 / 2,148 req/s,
single-row LR at 64 clients 3,194 / 4,465 / 3,491 -> 4,961 / 4,793 / 4,324 req/s (means +12 %
and +26 %); a second set of three each: +15 % and +14 % on average.
`GRPC_EXPERIMENTS=` (empty) restores grpcio's defaults.
"""


def apply_server_experiments() -> None:
    os.environ.setdefault("GRPC_EXPERIMENTS", SERVER_EXPERIMENTS)
