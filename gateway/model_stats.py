"""A model's request counters summed over the live replicas, per version: what the
dashboard samples to chart requests/s and p99 (the rate and the percentile come from the
difference between two samples, so they describe the last interval, not the replicas' life)."""

from __future__ import annotations

import time

from gateway.schemas import ModelCounters, VersionCounters
from mlops_core.fleet_state import LATENCY_BUCKETS_S, ReplicaReport, version_key


def model_counters(replicas: list[ReplicaReport], name: str) -> ModelCounters:
    """Every live replica's counters of the model, added up by version."""
    versions: dict[str, VersionCounters] = {}
    for replica in replicas:
        served = replica.models.get(name)
        if served is None:
            continue
        for version, stats in served.stats.items():
            total = versions.setdefault(
                version, VersionCounters(latency=[0] * (len(LATENCY_BUCKETS_S) + 1))
            )
            total.requests += stats.requests
            total.errors += stats.errors
            for index, count in enumerate(stats.latency[: len(total.latency)]):
                total.latency[index] += count
    return ModelCounters(
        model=name,
        at=time.time(),
        latency_buckets_s=list(LATENCY_BUCKETS_S),
        versions={v: versions[v] for v in sorted(versions, key=version_key)},
    )
