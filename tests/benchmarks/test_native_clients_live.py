"""h2load's gRPC calls against a real gRPC server (the minimal peer), for a fraction of a
second: the framing is right when the server answers, and its errors are seen."""

from __future__ import annotations

import pytest

from benchmarks import iris_models
from benchmarks.cells import Load, grpc_request, validate_grpc
from benchmarks.h2load import run_h2load
from benchmarks.measure import CpuMeter
from benchmarks.peers import start_baseline


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("baseline")
    iris_models.write_version(work / "models", "iris-lr", "1", iris_models.train("lr"))
    group = start_baseline(work / "models", work)
    yield group
    group.stop()


def test_h2load_calls_succeed_and_are_counted(native_tools, baseline):
    request = grpc_request(Load("lr", "grpc", "iris-lr", rows=1, concurrency=4))
    checked = validate_grpc(baseline.grpc_target, request, rows=1)
    assert checked["outputs"] == ["label", "probabilities"]
    meter = CpuMeter(baseline.pids())
    measured = run_h2load(
        native_tools["h2load"],
        baseline.grpc_target,
        request.SerializeToString(),
        concurrency=4,
        duration_s=0.5,
        warmup_s=0.2,
        expected_response_bytes=checked["response_bytes"] + 5,
    )
    cpu = meter.stop()
    assert measured.requests > 10
    assert measured.errors == 0, measured.notes
    assert 0 < measured.p50_ms <= measured.p99_ms
    assert cpu["baseline"] > 0, "the server's CPU during the cell is recorded"


def test_grpc_errors_show_as_missing_bytes(native_tools, baseline):
    good = grpc_request(Load("lr", "grpc", "iris-lr", rows=1, concurrency=1))
    size = validate_grpc(baseline.grpc_target, good, rows=1)["response_bytes"] + 5
    unknown = grpc_request(Load("x", "grpc", "no-such-model", rows=1, concurrency=1))
    measured = run_h2load(
        native_tools["h2load"], baseline.grpc_target, unknown.SerializeToString(), 2, 0.3, 0.1, size
    )
    assert measured.requests > 0
    assert measured.errors == measured.requests, "HTTP said 200; the missing answers tell"
