"""The dashboard's files are public (they hold no data); the counters it charts are not."""

from __future__ import annotations

import httpx

from gateway.model_stats import model_counters
from mlops_core.fleet_state import LATENCY_BUCKETS_S, ReplicaReport, ServedModel, VersionStats
from tests.gateway.conftest import Gateway


def test_page_and_assets_are_public_and_the_api_is_not(gateway: Gateway, api: httpx.Client):
    anonymous = gateway.client(auth=False)
    page = anonymous.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("/dashboard/static/dashboard.js", "/dashboard/static/dashboard.css"):
        assert asset in page.text
        assert anonymous.get(asset).status_code == 200
    assert "https://" not in page.text  # nothing from a CDN
    assert anonymous.get("/docs").status_code == 200
    assert anonymous.get("/models/iris/stats").status_code == 401
    counters = api.get("/models/iris/stats").json()
    assert counters["model"] == "iris" and counters["versions"] == {}
    assert counters["latency_buckets_s"] == list(LATENCY_BUCKETS_S)


def test_counters_add_up_over_replicas_by_version():
    buckets = len(LATENCY_BUCKETS_S) + 1

    def replica(name: str, stats: dict[str, VersionStats]) -> ReplicaReport:
        served = ServedModel(active="2", loaded=list(stats), stats=stats)
        return ReplicaReport(name, "a:1", "a:2", {"iris": served, "other": served})

    one = [1] + [0] * (buckets - 1)
    replicas = [
        replica("r1", {"2": VersionStats(requests=3, errors=1, latency=one), "10": VersionStats()}),
        replica("r2", {"2": VersionStats(requests=4, latency=one)}),
    ]
    counters = model_counters(replicas, "iris")
    assert list(counters.versions) == ["2", "10"]
    assert (counters.versions["2"].requests, counters.versions["2"].errors) == (7, 1)
    assert counters.versions["2"].latency == [2] + [0] * (buckets - 1)
    assert counters.versions["10"].latency == [0] * buckets
