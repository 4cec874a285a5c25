"""grpc core's own settings for a replica, applied before grpc is first imported."""

from __future__ import annotations

import os

SERVER_EXPERIMENTS = "-event_engine_listener,-event_engine_for_all_other_endpoints"
"""grpc core's experiments a replica turns off unless GRPC_EXPERIMENTS says otherwise.

NOTE: with them on (grpcio's default), sockets are read and written by EventEngine's own
threads, which then wake the thread polling the completion queue: one more thread hop per
event. Off, the polling thread does the I/O itself, and a pinned replica serves more requests
per second; the alternating runs that showed it are in benchmarks/README.md ("What changed,
and what each change bought"). `GRPC_EXPERIMENTS=` (empty) restores grpcio's defaults.
"""


def apply_server_experiments() -> None:
    os.environ.setdefault("GRPC_EXPERIMENTS", SERVER_EXPERIMENTS)
