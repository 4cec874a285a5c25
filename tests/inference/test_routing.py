"""Candidate routes in the repository, the mirror's comparison and queue, and the per-version
counters a heartbeat reports: called directly, as the reconciler and the servicer call them."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from benchmarks import iris_models
from inference.metrics import ReplicaMetrics
from inference.mirror import MirrorQueue, answers_agree
from inference.repository import ModelRepository
from inference.sources import DirectorySource
from mlops_core.fleet_state import LATENCY_BUCKETS_S, CandidateRoute
from tests.inference.conftest import GatedSource, make_repository

X, Y = iris_models.iris()


@pytest.fixture(scope="module")
def route_repo(iris_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """iris 1 (LR), 2 (RF), 3 (a copy of 1) and 4 (LR answering other labels)."""
    root = tmp_path_factory.mktemp("route-repo")
    shutil.copytree(iris_repo / "iris", root / "iris")
    shutil.copytree(root / "iris" / "1", root / "iris" / "3")
    relabelled = LogisticRegression(max_iter=200).fit(X, (Y + 1) % 3)
    iris_models.write_version(root, "iris", "4", relabelled)
    return root


async def routed(root: Path, candidate: CandidateRoute, active: str = "1") -> ModelRepository:
    repo = make_repository(DirectorySource(root))
    await repo.swap("iris", active)
    await repo.load("iris", candidate.version)
    repo.set_route("iris", candidate)
    return repo


def shares(repo: ModelRepository, draws: int = 2000) -> Counter[str]:
    return Counter(repo.resolve("iris", None).version for _ in range(draws))


async def test_unpinned_requests_split_by_weight_and_pinned_ones_do_not(route_repo: Path) -> None:
    repo = await routed(route_repo, CandidateRoute(version="2", weight=0.3))
    assert "iris" in repo.split_models
    counts = shares(repo)
    assert 0.25 < counts["2"] / 2000 < 0.35
    assert {repo.resolve("iris", "1").version for _ in range(200)} == {"1"}
    assert {repo.resolve("iris", "2").version for _ in range(200)} == {"2"}
    assert {repo.resolve("iris", None, split=False).version for _ in range(200)} == {"1"}


async def test_a_routing_key_stays_on_its_side_as_the_weight_grows(route_repo: Path) -> None:
    repo = await routed(route_repo, CandidateRoute(version="2", weight=0.2))
    keys = [f"user-{i}" for i in range(1000)]
    first = {key: repo.resolve("iris", None, key).version for key in keys}
    assert all(repo.resolve("iris", None, key).version == first[key] for key in keys[:50])
    on_candidate = {key for key, version in first.items() if version == "2"}
    assert 0.15 < len(on_candidate) / len(keys) < 0.25
    repo.set_route("iris", CandidateRoute(version="2", weight=0.6))
    later = {key: repo.resolve("iris", None, key).version for key in keys}
    assert all(later[key] == "2" for key in on_candidate)
    assert 0.55 < sum(v == "2" for v in later.values()) / len(keys) < 0.65


async def test_a_shadow_never_answers(route_repo: Path) -> None:
    repo = await routed(route_repo, CandidateRoute(version="2", weight=0.0, mirror_rate=1.0))
    assert "iris" not in repo.split_models
    assert shares(repo) == {"1": 2000}
    assert repo.resolve("iris", None).mirror is not None, "the active version mirrors"
    assert repo.resolve("iris", "2").mirror is None
    assert repo.served()["iris"].candidate == CandidateRoute(version="2", mirror_rate=1.0)


async def test_no_route_until_the_candidate_is_loaded(route_repo: Path) -> None:
    source = GatedSource(route_repo)
    source.gate.set()
    repo = make_repository(source)
    await repo.swap("iris", "1")
    source.gate.clear()
    candidate = CandidateRoute(version="2", weight=1.0)
    loading = asyncio.create_task(repo.load("iris", "2"))
    await asyncio.sleep(0.05)
    assert not loading.done()
    repo.set_route("iris", candidate)  # as a resync would, while version 2 still loads
    assert repo.served()["iris"].candidate is None
    assert shares(repo, 100) == {"1": 100}
    source.gate.set()
    await loading
    repo.set_route("iris", candidate)
    assert shares(repo, 100) == {"2": 100}


async def test_clearing_promoting_or_unloading_the_candidate_ends_the_route(
    route_repo: Path,
) -> None:
    spec = CandidateRoute(version="2", weight=0.5, mirror_rate=0.5)
    repo = await routed(route_repo, spec)
    repo.set_route("iris", None)
    assert shares(repo, 200) == {"1": 200} and not repo.split_models
    assert repo.resolve("iris", "1").mirror is None
    repo.set_route("iris", spec)
    repo.activate("iris", "2")  # promoted: the candidate is the champion now
    assert repo.served()["iris"].candidate is None and not repo.split_models
    assert all(repo.resolve("iris", v).mirror is None for v in ("1", "2"))
    repo.activate("iris", "1")
    repo.set_route("iris", spec)
    repo.unload("iris", "2")
    assert repo.served()["iris"].candidate is None and shares(repo, 200) == {"1": 200}


async def test_the_candidate_is_never_evicted(route_repo: Path) -> None:
    repo = make_repository(DirectorySource(route_repo), keep_versions=1)
    await repo.swap("iris", "1")
    await repo.load("iris", "2")
    repo.set_route("iris", CandidateRoute(version="2", weight=0.5))
    await repo.swap("iris", "1")  # a resync: swap evicts down to keep_versions
    repo.evict("iris", keep=["1"])
    assert repo.served()["iris"].loaded == ["1", "2"]


async def mirrored_stats(root: Path, candidate: str, requests: int) -> dict[str, int]:
    spec = CandidateRoute(version=candidate, weight=0.0, mirror_rate=1.0, agreement_rtol=1e-4)
    repo = await routed(root, spec)
    champion = repo.resolve("iris", None)
    assert champion.mirror is not None
    for row in range(requests):
        inputs = {"input": X[row : row + 1]}
        champion.mirror.offer(inputs, 1, champion.infer(inputs, 1))
    done = threading.Event()
    repo.mirror_queue.submit(done.set)
    assert done.wait(10)
    stats = repo.served(with_stats=True)["iris"].stats[candidate]
    assert sum(stats.mirror_latency) == stats.compared
    return {
        "mirrored": stats.mirrored,
        "dropped": stats.mirror_dropped,
        "compared": stats.compared,
        "agreed": stats.agreed,
        "errors": stats.mirror_errors,
    }


async def test_mirror_of_the_same_model_agrees_and_of_another_does_not(route_repo: Path) -> None:
    same = await mirrored_stats(route_repo, "3", 20)
    assert same["mirrored"] + same["dropped"] == 20
    assert same["compared"] == same["agreed"] == same["mirrored"] > 0
    other = await mirrored_stats(route_repo, "4", 20)
    assert other["mirrored"] + other["dropped"] == 20
    assert other["compared"] == other["mirrored"] and other["agreed"] < other["compared"]


def test_answers_agree_exactly_on_labels_and_within_tolerance_on_floats() -> None:
    labels = np.array([0, 1, 2], np.int64)
    assert answers_agree(labels.copy(), labels, rtol=0.5)
    assert not answers_agree(np.array([0, 1, 1], np.int64), labels, rtol=0.5)
    probs = np.array([[0.2, 0.8], [0.5, 0.5]], np.float32)
    assert answers_agree(probs * 1.005, probs, rtol=0.01)
    assert not answers_agree(probs * 1.05, probs, rtol=0.01)
    assert not answers_agree(probs[:1], probs, rtol=0.01), "a different shape never agrees"
    assert answers_agree(np.zeros(3), np.zeros(3), rtol=0.0)


def test_a_full_mirror_queue_refuses_work() -> None:
    jobs = MirrorQueue(max_pending=2)  # not started: nothing drains it
    assert jobs.submit(lambda: None) and jobs.submit(lambda: None)
    assert not jobs.submit(lambda: None)


def test_version_stats_are_per_bucket_counts_summed_over_codes() -> None:
    metrics = ReplicaMetrics()
    for seconds in (0.00005, 0.00012, 0.00012, 0.004, 9.0):
        metrics.latency.labels("iris", "1").observe(seconds)
    metrics.requests.labels("iris", "1").inc(7)
    metrics.failures.labels("iris", "1", "INVALID_ARGUMENT").inc()
    metrics.failures.labels("iris", "1", "INTERNAL").inc()
    stats = metrics.version_stats([("iris", "1"), ("iris", "2")])
    one, two = stats["iris", "1"], stats["iris", "2"]
    assert len(one.latency) == len(LATENCY_BUCKETS_S) + 1 == len(two.mirror_latency)
    assert one.latency[0] == 1 and one.latency[1] == 2 and one.latency[-1] == 1
    assert one.latency[LATENCY_BUCKETS_S.index(0.005)] == 1 and sum(one.latency) == 5
    assert (one.requests, one.errors) == (7, 2)
    assert two.requests == 0 and sum(two.latency) == 0
