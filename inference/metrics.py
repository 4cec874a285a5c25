"""Prometheus metrics of a replica, per model and version, and the per-version counters its
heartbeat reports (read back from the same series)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mlops_core.fleet_state import LATENCY_BUCKETS_S, VersionStats

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

VersionKey = tuple[str, str]
"""(model, version)"""


class ReplicaMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ("model", "version")
        self.requests = Counter(
            "mlops_inference_requests",
            "Inference requests received.",
            labels,
            registry=self.registry,
        )
        self.failures = Counter(
            "mlops_inference_failures",
            "Inference requests that failed, by gRPC code.",
            (*labels, "code"),
            registry=self.registry,
        )
        # NOTE: the heartbeat's buckets, fine below 10 ms so a p99 can be read from them. An
        # observe scans the bounds in order (prometheus_client); timed with timeit against the
        # 14 coarser ones used before, it costs the same for 200 us, +25 ns for 0.5 ms and
        # +65 ns for 2 ms, of about 600 ns.
        self.latency = Histogram(
            "mlops_inference_request_duration_seconds",
            "Time from request to response.",
            labels,
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.queue_time = Histogram(
            "mlops_inference_queue_duration_seconds",
            "Time a request waited for its batch.",
            labels,
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "mlops_inference_batch_rows",
            "Rows in each onnxruntime call.",
            labels,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.active_version = Gauge(
            "mlops_inference_active_version",
            "The version serving requests that name none.",
            ("model",),
            registry=self.registry,
        )
        self.loaded = Gauge(
            "mlops_inference_loaded_versions",
            "Versions loaded per model.",
            ("model",),
            registry=self.registry,
        )
        # The memory budget (MLOPS_REPLICA_MEMORY_BUDGET_MB): what each resident version takes,
        # and how often versions come and go.
        self.memory_budget = Gauge(
            "mlops_inference_memory_budget_bytes",
            "Memory the resident versions may take together; 0: unlimited.",
            registry=self.registry,
        )
        self.resident_memory = Gauge(
            "mlops_inference_resident_memory_bytes",
            "Memory the resident versions take together, as measured when each loaded.",
            registry=self.registry,
        )
        self.version_memory = Gauge(
            "mlops_inference_version_memory_bytes",
            "Memory a resident version took when it loaded.",
            labels,
            registry=self.registry,
        )
        self.version_loads = Counter(
            "mlops_inference_version_loads",
            "Versions loaded into memory.",
            registry=self.registry,
        )
        self.version_evictions = Counter(
            "mlops_inference_version_evictions",
            "Versions unloaded to make room under the memory budget.",
            registry=self.registry,
        )
        self.cold_load_waits = Counter(
            "mlops_inference_cold_load_waits",
            "Requests that found their version not resident and waited for it to load, by "
            "outcome: served, timeout (not loaded within the wait) or no_room (budget full).",
            ("outcome",),
            registry=self.registry,
        )
        # The mirror: requests answered by the active version and also run, off the response
        # path, on a candidate (the version in the labels); its answers go to no one.
        self.mirror_requests = Counter(
            "mlops_inference_mirror_requests",
            "Requests run on a candidate as a mirror of the active version's.",
            labels,
            registry=self.registry,
        )
        self.mirror_failures = Counter(
            "mlops_inference_mirror_failures",
            "Mirrored requests the candidate failed on.",
            labels,
            registry=self.registry,
        )
        self.mirror_latency = Histogram(
            "mlops_inference_mirror_duration_seconds",
            "Time the candidate took on a mirrored request.",
            labels,
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.mirror_compared = Counter(
            "mlops_inference_mirror_compared",
            "Mirrored requests whose answer was compared with the active version's.",
            labels,
            registry=self.registry,
        )
        self.mirror_agreed = Counter(
            "mlops_inference_mirror_agreed",
            "Compared mirrored requests whose answer agreed with the active version's.",
            labels,
            registry=self.registry,
        )
        self.mirror_dropped = Counter(
            "mlops_inference_mirror_dropped",
            "Requests drawn for the mirror but not run: its queue was full.",
            labels,
            registry=self.registry,
        )

    def version_stats(self, versions: Iterable[VersionKey]) -> dict[VersionKey, VersionStats]:
        """The counters of these versions, read from the series above (zeros for a version
        with none yet).

        NOTE: read from each series' children directly (prometheus_client's `_metrics`,
        `_value`, `_buckets`), not through `collect()`, which builds every sample of a family:
        about 50 us per histogram child, so 16 ms of the GIL per heartbeat with 200 versions
        (a memory budget's churn leaves a series per version ever loaded), against well under
        a millisecond this way. The lock file pins prometheus_client (0.26)."""
        stats = {key: _empty_stats() for key in versions}
        for field, counter in (
            ("requests", self.requests),
            ("errors", self.failures),
            ("mirrored", self.mirror_requests),
            ("mirror_errors", self.mirror_failures),
            ("compared", self.mirror_compared),
            ("agreed", self.mirror_agreed),
            ("mirror_dropped", self.mirror_dropped),
        ):
            for labels, child in _children(counter):
                entry = stats.get(labels)
                if entry is not None:
                    setattr(entry, field, getattr(entry, field) + int(child._value.get()))
        for field, histogram in (
            ("latency", self.latency),
            ("mirror_latency", self.mirror_latency),
        ):
            for labels, child in _children(histogram):
                if labels in stats:
                    # NOTE: a child keeps each observation in its one bucket (not cumulative),
                    # the +Inf bucket last: the heartbeat's layout.
                    setattr(stats[labels], field, [int(b.get()) for b in child._buckets])
        return stats


def _empty_stats() -> VersionStats:
    zeros = [0] * (len(LATENCY_BUCKETS_S) + 1)
    return VersionStats(latency=list(zeros), mirror_latency=list(zeros))


def _children(metric: Counter | Histogram) -> list[tuple[VersionKey, Any]]:
    """A labelled metric's children by their first two label values (model, version; a
    failure's code follows), copied under its lock."""
    with metric._lock:
        return [((labels[0], labels[1]), child) for labels, child in metric._metrics.items()]
