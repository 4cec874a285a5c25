"""The hot-swap primitive (ModelRepository), called directly as the fleet reconcile calls it."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from inference.repository import BatchingPolicy
from inference.sources import DirectorySource
from mlops_core.errors import ModelLoadError, ModelNotFound, ModelNotReady
from mlops_core.oip import infer_request
from tests.inference.conftest import GatedSource, make_repository

ROW = np.array([[5.9, 3.0, 5.1, 1.8]], np.float32)


@pytest.fixture(scope="module")
def swap_repo(iris_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """iris 1 (LR) and 2 (RF) plus 3, a corrupt file, and 4, a copy of 1."""
    root = tmp_path_factory.mktemp("swap-repo")
    shutil.copytree(iris_repo / "iris", root / "iris")
    (root / "iris" / "3").mkdir()
    (root / "iris" / "3" / "model.onnx").write_bytes(b"not an onnx model")
    shutil.copytree(root / "iris" / "1", root / "iris" / "4")
    return root


async def test_swap_activates_and_keeps_previous_loaded(swap_repo: Path) -> None:
    repo = make_repository(DirectorySource(swap_repo))
    await repo.swap("iris", "1")
    assert repo.resolve("iris", None).version == "1"
    await repo.swap("iris", "2")
    assert repo.resolve("iris", None).version == "2"
    assert repo.resolve("iris", "1").version == "1"  # the rollback target stays warm
    started = time.perf_counter()
    await repo.swap("iris", "1")  # a rollback is a flip, not a load
    assert time.perf_counter() - started < 0.01
    assert repo.served()["iris"].active == "1"


async def test_failed_load_leaves_active_version_serving(swap_repo: Path) -> None:
    repo = make_repository(DirectorySource(swap_repo))
    await repo.swap("iris", "2")
    with pytest.raises(ModelLoadError, match="version '3'"):
        await repo.swap("iris", "3")
    assert repo.resolve("iris", None).version == "2"
    served = repo.served()["iris"]
    assert served.active == "2" and "3" in served.failed
    out = repo.resolve("iris", None).infer({"input": ROW}, 1)
    assert out["label"].shape == (1,)


async def test_keeps_only_the_last_n_versions(swap_repo: Path) -> None:
    repo = make_repository(DirectorySource(swap_repo), keep_versions=2)
    for version in ("1", "2", "4"):
        await repo.swap("iris", version)
    assert repo.served()["iris"].loaded == ["2", "4"]
    with pytest.raises(ModelNotFound, match="loaded versions: \\['2', '4'\\]"):
        repo.resolve("iris", "1")


async def test_request_in_flight_finishes_on_its_version(swap_repo: Path) -> None:
    repo = make_repository(DirectorySource(swap_repo), keep_versions=1)
    await repo.swap("iris", "1")
    v1 = repo.resolve("iris", None)
    expected_v1 = v1.infer({"input": ROW}, 1)
    # Hold a request inside version 1's batcher: a first request occupies the call, so the
    # second queues behind it, both on version 1, while 2 becomes active and 1 is unloaded.
    entered, release = threading.Event(), threading.Event()
    run = v1.batcher._run

    def held(inputs):
        entered.set()
        release.wait(10)
        return run(inputs)

    v1.batcher._run = held
    first = asyncio.ensure_future(asyncio.to_thread(v1.infer, {"input": ROW}, 1))
    assert await asyncio.to_thread(entered.wait, 10)
    queued = asyncio.ensure_future(asyncio.to_thread(v1.infer, {"input": ROW}, 1))
    await asyncio.sleep(0.01)
    await repo.swap("iris", "2")  # activates 2 and unloads 1 (keep_versions=1)
    assert repo.served()["iris"].loaded == ["2"]
    release.set()
    for result in await asyncio.gather(first, queued):
        np.testing.assert_array_equal(result["probabilities"], expected_v1["probabilities"])


async def test_loading_model_is_unavailable_then_serves(swap_repo: Path) -> None:
    source = GatedSource(swap_repo)
    repo = make_repository(source)
    loading = asyncio.ensure_future(repo.swap("iris", "1"))
    await asyncio.sleep(0.01)
    with pytest.raises(ModelNotReady) as caught:
        repo.resolve("iris", None)
    assert caught.value.grpc_code == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(ModelNotReady):
        repo.resolve("iris", "1")
    source.gate.set()
    await loading
    assert repo.resolve("iris", None).version == "1"


@pytest.mark.parametrize(("threshold_us", "batched"), [(0, True), (1_000_000, False)])
async def test_batching_only_where_a_call_has_a_fixed_cost_to_share(
    swap_repo: Path, threshold_us: int, batched: bool
) -> None:
    policy = BatchingPolicy(min_fixed_cost_us=threshold_us)
    repo = make_repository(DirectorySource(swap_repo), policy=policy)
    loaded = await repo.load("iris", "2")
    cost = loaded.model.call_cost
    assert cost is not None and cost.fixed_s > 0 and cost.per_row_s > 0  # RF: rows cost too
    assert loaded.batched is batched and (loaded.batcher is not None) is batched
    out = loaded.infer({"input": np.repeat(ROW, 3, axis=0)}, 3)
    assert out["label"].shape == (3,)


async def test_unknown_model_and_bad_version(swap_repo: Path) -> None:
    repo = make_repository(DirectorySource(swap_repo))
    with pytest.raises(ModelNotFound, match="not served here"):
        repo.resolve("nope", None)
    with pytest.raises(ModelLoadError, match="not in"):
        await repo.swap("iris", "9")
    with pytest.raises(ModelNotFound, match="positive integer"):
        await repo.load("iris", "latest")


@pytest.mark.parametrize("keep_versions", [3, 1])
async def test_swaps_under_load_drop_nothing(in_process_replica, keep_versions: int) -> None:
    """20 alternating swaps under 16 concurrent clients: zero failures, and every response
    names a version that was active at some moment while that request ran."""
    replica, stub = in_process_replica
    repo = replica.repository
    repo.keep_versions = keep_versions
    request = infer_request("iris", {"input": ROW})
    active_since: list[tuple[str, float]] = [(repo.resolve("iris", None).version, 0.0)]
    responses: list[tuple[float, float, str]] = []
    errors: list[BaseException] = []
    done = asyncio.Event()

    async def client() -> None:
        while not done.is_set():
            started = time.perf_counter()
            try:
                response = await stub.ModelInfer(request)
            except grpc.aio.AioRpcError as exc:
                errors.append(exc)
                continue
            responses.append((started, time.perf_counter(), response.model_version))

    async def swapper() -> None:
        for i in range(20):
            await asyncio.sleep(0.03)
            version = "1" if i % 2 == 0 else "2"
            await repo.swap("iris", version)
            active_since.append((version, time.perf_counter()))
        await asyncio.sleep(0.03)
        done.set()

    await asyncio.gather(swapper(), *(client() for _ in range(16)))
    assert errors == []
    assert len(responses) > 200
    intervals = [
        (version, start, active_since[i + 1][1] if i + 1 < len(active_since) else float("inf"))
        for i, (version, start) in enumerate(active_since)
    ]
    for started, ended, version in responses:
        assert any(
            v == version and start <= ended and end >= started for v, start, end in intervals
        ), f"response from version {version} at {started:.4f}-{ended:.4f} was never active"
    assert {v for _, _, v in responses} == {"1", "2"}
