"""A model's request counters summed over the live replicas, per version: what the
dashboard samples to chart requests/s and p99 (the rate and the percentile come from the
difference between two samples, so they describe the last interval, not the replicas' life)."""

from __future__ import annotations

import time

from gateway.schemas import ModelCounters, VersionCounters
from mlops_core.fleet_state import LATENCY_BUCKETS_S, ReplicaReport, version_key
from mlops_core.rollout_analysis import CounterTotal


def model_counters(replicas: list[ReplicaReport], name: str) -> ModelCounters:
    """Every live replica's counters of the model, added up by version."""
    totals: dict[str, CounterTotal] = {}
    for replica in replicas:
        served = replica.models.get(name)
        if served is None:
            continue
        for version, stats in served.stats.items():
            totals.setdefault(version, CounterTotal()).add(
                stats.requests, stats.errors, stats.latency
            )
    versions = {
        v: VersionCounters(requests=t.requests, errors=t.errors, latency=t.latency)
        for v, t in totals.items()
    }
    return ModelCounters(
        model=name,
        at=time.time(),
        latency_buckets_s=list(LATENCY_BUCKETS_S),
        versions={v: versions[v] for v in sorted(versions, key=version_key)},
    )
