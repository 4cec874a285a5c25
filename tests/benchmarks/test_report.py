"""The report rendered from a fixture run: each goal with its ratio and verdict, the tables
and the plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import report

FIXTURE = Path(__file__).with_name("fixtures") / "results.json"


@pytest.fixture
def results() -> dict:
    return json.loads(FIXTURE.read_text())


def verdicts(results: dict) -> dict[str, tuple[float | None, bool | None]]:
    return {g.goal: (g.ratio and round(g.ratio, 3), g.met) for g in report.goals(results)}


def test_each_goal_has_its_ratio_and_verdict(results):
    assert verdicts(results) == {
        "gRPC single-row LR, c=64: req/s vs MLServer's best": (5.0, True),
        "gRPC single-row LR, c=64: p99 vs MLServer's best": (0.2, True),
        "gRPC single-row RF, c=64: req/s vs MLServer's best": (5.0, False),
        "gRPC single-row LR, c=64: req/s vs minimal grpcio + onnxruntime": (2.0, True),
        "gRPC single-row LR, c=1: p50 vs minimal grpcio + onnxruntime (idle cost)": (0.8, True),
        "REST predict, c=64: gateway req/s vs MLServer's best REST": (1.667, False),
        "OIP REST through the gateway at c=64 vs the gateway's own REST predict": (0.9, True),
        "20 version swaps under load: p99 vs steady p99": (1.3, True),
        "… and errors": (None, True),
        "budget for half of 200 models: hot p99 vs a replica of only them": (None, None),
        "64-row RF requests, c=16: rows/s vs in-process onnxruntime "
        "(64-row calls, one thread per fleet CPU)": (0.2, False),
        "1024-row RF requests, c=16: rows/s vs in-process onnxruntime "
        "(1024-row calls, one thread per fleet CPU)": (0.8, True),
    }


def test_a_many_row_cell_is_compared_with_the_ceiling_measured_beside_it(results):
    cell = next(c for c in results["cells"] if c["load"]["key"] == "rf1024rows-c16")
    cell["ceiling"] = {"rows_per_s": 2_048_000.0, "how": "beside"}
    goal = next(g for g in report.goals(results) if g.goal.startswith("1024-row"))
    assert (goal.ratio, goal.met) == (0.4, False)
    assert "2,048,000 rows/s (beside)" in goal.measured


def test_the_peer_side_is_its_best_configuration(results):
    goal = report.goals(results)[0]
    assert "(MLServer 1.7.1, adaptive batching (32, 2 ms))" in goal.measured
    assert "(ours, 2 replicas)" in goal.measured


def test_a_goal_is_not_met_when_our_cell_had_errors(results):
    for cell in results["cells"]:
        if cell["server"] == "gateway":
            cell["rps"] = 10_000
    rest = next(g for g in report.goals(results) if g.goal.startswith("REST"))
    assert rest.ratio and rest.ratio > 2
    assert rest.met is False and "3 errors" in rest.measured


def test_goals_without_peers_are_not_measured(results):
    results["cells"] = [c for c in results["cells"] if not c["server"].startswith("mlserver")]
    first = report.goals(results)[0]
    assert (first.ratio, first.met, first.measured) == (None, None, "not measured in this run")


def test_markdown_has_the_goals_and_a_table_per_scenario(results):
    text = report.render_markdown(results)
    for heading in (
        "## Goals",
        "## gRPC, single-row iris LR (ModelInfer)",
        "## gRPC, iris RF",
        "## REST predict, single-row iris LR, c=64 (wrk)",
        "## Version swaps under load",
        "## In-process onnxruntime",
        "## Profile: one replica",
        "## Every cell",
    ):
        assert heading in text
    times = report.TIMES
    assert (
        f"| gRPC single-row LR, c=64: req/s vs MLServer's best | ≥ 3{times} | 5.00{times} |" in text
    )
    assert "| ours, 2 replicas | 2,400 | 0.37 |" in text
    assert "| our gateway (REST) → fleet | 2,000 | 30.0 | 60.0 | 3 |" in text
    assert "redis 0.01, replicas 0.60, gateway 1.00" in text, "CPU of each process, in cores"
    assert "![latency vs throughput](latency_vs_throughput.png)" in text


def test_render_writes_the_report_and_a_png(results, tmp_path: Path):
    path, plot = report.render(results, tmp_path)
    assert path.read_text().startswith("# Benchmark report")
    assert plot is not None and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
