"""Many models per replica: memory per loaded model, start-to-ready and hot models' p99 with
10, 100 and 500 small models registered, and the memory budget's acceptance ratio: with a
budget holding half of 200 models, hot models' p99 under load against a replica serving only
them (goal: at most 1.5x).

Every model is a copy of one of two small iris models (an LR classifier, 4 features; a linear
regressor, 3 features), alternating, written once and copied: loading, not training, is what
is measured.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks import iris_models
from benchmarks.cells import Load, Options, run_grpc
from benchmarks.servers import ServerGroup, start_redis, start_replicas
from mlops_core import fleet_state
from mlops_core.oip import infer_request
from mlops_core.protocol import open_inference_pb2_grpc as pb_grpc

KINDS = ("lr", "linreg")
"""Model i is a copy of KINDS[i % 2]."""
WIDTHS = {"lr": 4, "linreg": 3}
COUNTS = (10, 100, 500)
HOT_MODELS = 5
ACCEPTANCE_MODELS = 200
GOAL_RATIO = 1.5
COLD_PER_S = 20
"""Rounds of background requests a second beside the hot load (`Churn`)."""
ACCEPTANCE_SLICES = 7
"""Alternating slices of hot load on the replica of only the hot models and the budgeted one."""


def model_name(i: int) -> str:
    return f"model-{i:03d}"


@dataclass(frozen=True)
class ModelSet:
    root: Path
    names: list[str]
    trained: dict[str, Any]
    """Kind -> the scikit-learn model every copy of that kind was converted from."""

    def kind(self, name: str) -> str:
        return KINDS[int(name.rsplit("-", 1)[1]) % len(KINDS)]

    def width(self, name: str) -> int:
        return WIDTHS[self.kind(name)]

    def expected(self, name: str, rows: np.ndarray) -> np.ndarray:
        """What `name` answers for `rows`: labels (LR) or petal widths (regressor)."""
        return np.asarray(self.trained[self.kind(name)].predict(rows))


def write_models(root: Path, count: int) -> ModelSet:
    """`count` models, version 1 each, under `root` (Triton layout): two trained, the rest
    copied from them."""
    trained = {kind: iris_models.train(kind) for kind in KINDS}
    names = [model_name(i) for i in range(count)]
    for i, name in enumerate(names):
        if i < len(KINDS):
            iris_models.write_version(root, name, "1", trained[KINDS[i]])
        else:
            shutil.copytree(root / model_name(i % len(KINDS)), root / name)
    return ModelSet(root, names, trained)


async def desire_models(redis_url: str, names: Sequence[str]) -> None:
    """Version 1 of each model desired, written at once with one change notice."""
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        value = json.dumps({"active": "1", "warm": []})
        await redis.hset(fleet_state.DESIRED_KEY, mapping=dict.fromkeys(names, value))
        await redis.publish(fleet_state.CHANGED_CHANNEL, "many-models")
    finally:
        await redis.aclose()


def health(http_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{http_url}/health", timeout=5) as response:
        return json.loads(response.read())


def http_address(redis_url: str) -> str:
    """The HTTP status address of the one live replica, from its heartbeat."""
    from redis.asyncio import Redis

    async def read() -> str:
        redis = Redis.from_url(redis_url)
        try:
            deadline = time.monotonic() + 15
            while not (replicas := await fleet_state.live_replicas(redis)):
                if time.monotonic() > deadline:
                    raise RuntimeError("no replica heartbeat")
                await asyncio.sleep(0.1)
            return replicas[0].http_address
        finally:
            await redis.aclose()

    return asyncio.run(read())


class Churn:
    """Background requests while a hot model is loaded: each round, the other hot models once
    and (with `cold` names) the next cold model, paced at `COLD_PER_S` rounds a second."""

    def __init__(self, target: str, models: ModelSet, hot: list[str], cold: list[str]) -> None:
        self.target, self.models, self.hot, self.cold = target, models, hot, cold
        self.stop = threading.Event()
        self.calls: dict[str, int] = {}
        self.thread = threading.Thread(target=self._run, name="churn", daemon=True)

    def __enter__(self) -> Churn:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def _run(self) -> None:
        x, _ = iris_models.iris()
        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            cold = iter(self.cold * 100)
            while not self.stop.wait(1 / COLD_PER_S):
                names = [*self.hot, *([next(cold)] if self.cold else [])]
                for name in names:
                    kind = "cold" if name in self.cold else "hot"
                    request = infer_request(name, {"input": x[:1, : self.models.width(name)]})
                    try:
                        stub.ModelInfer(request, timeout=30)
                        outcome = f"{kind} ok"
                    except grpc.RpcError as exc:
                        outcome = f"{kind} {exc.code().name}"
                    self.calls[outcome] = self.calls.get(outcome, 0) + 1


@dataclass
class RunningReplica:
    """One replica in fleet mode on its own Redis database, started and timed."""

    names: list[str]
    budget_mb: int
    group: ServerGroup
    status_url: str
    ready_s: float
    at_ready: dict[str, Any]
    """/health's `memory` once ready."""

    @staticmethod
    def start(
        models: ModelSet, names: list[str], redis_url: str, log_dir: Path, budget_mb: int = 0
    ) -> RunningReplica:
        asyncio.run(desire_models(redis_url, names))
        env = {"MLOPS_REPLICA_MEMORY_BUDGET_MB": str(budget_mb), "MLOPS_COLD_LOAD_WAIT_S": "10"}
        started = time.monotonic()
        procs, port, _ = start_replicas(models.root, log_dir, 1, redis_url=redis_url, env=env)
        ready_s = time.monotonic() - started
        group = ServerGroup(log_dir.name, f"127.0.0.1:{port}", None, {"replicas": procs})
        try:
            status_url = http_address(redis_url)
            at_ready = health(status_url)["memory"]
        except Exception:
            group.stop()
            raise
        return RunningReplica(names, budget_mb, group, status_url, ready_s, at_ready)

    @property
    def hot(self) -> list[str]:
        return self.names[:HOT_MODELS]

    @property
    def cold_cycle(self) -> list[str]:
        """The models but the hot ones, those not resident at ready first: requested in this
        order, round and round, each was last asked for 194 requests ago and is evicted by
        then (the budget holds about 100), so every request is a load."""
        resident = self.at_ready["resident_versions"]
        others = self.names[HOT_MODELS:]
        return sorted(others, key=lambda n: f"{n}/1" in resident)

    def load_hot(
        self, models: ModelSet, options: Options, cold: list[str]
    ) -> tuple[dict[str, Any], dict[str, int]]:
        """h2load on the first hot model, `Churn` beside it; the cell and the churn's calls."""
        load = Load(f"hot-{len(self.names)}", "grpc", self.hot[0], 1, 16)
        with Churn(self.group.grpc_target or "", models, self.hot[1:], cold) as churn:
            cell = run_grpc(self.group, load, options)
        return cell, churn.calls

    def summary(self, cells: list[dict[str, Any]], calls: dict[str, int]) -> dict[str, Any]:
        """The figures of the report's table; with several cells, the median p99's cell."""
        memory = health(self.status_url)["memory"]
        resident = memory["resident_versions"]
        cell = sorted(cells, key=lambda c: c["p99_ms"])[len(cells) // 2]
        return {
            "models": len(self.names),
            "budget_mb": self.budget_mb,
            "ready_s": round(self.ready_s, 2),
            "resident_at_ready": len(self.at_ready["resident_versions"]),
            "resident_bytes_at_ready": self.at_ready["resident_bytes"],
            "rss_bytes_at_ready": self.at_ready["process_rss_bytes"],
            "resident": len(resident),
            "resident_bytes": memory["resident_bytes"],
            "rss_bytes": memory["process_rss_bytes"],
            "per_model_bytes": (
                statistics.median(v["bytes"] for v in resident.values()) if resident else 0
            ),
            "loads": memory["loads"],
            "evictions": memory["evictions"],
            "cold_load_waits": memory["cold_load_waits"],
            "churn": calls,
            "hot": cell,
            "hot_p99_ms_by_slice": [c["p99_ms"] for c in cells],
            "hot_errors": sum(c["errors"] for c in cells),
        }


def scenario(workdir: Path, options: Options) -> dict[str, Any]:
    """The `models` part of `python -m benchmarks run`."""
    logs = workdir / "logs" / "models"
    models = write_models(workdir / "many-models", max(*COUNTS, ACCEPTANCE_MODELS))
    redis, base_url = start_redis(logs)
    databases = iter(range(16))

    def fresh_db() -> str:
        return base_url.rsplit("/", 1)[0] + f"/{next(databases)}"

    try:
        counts = []
        for count in COUNTS:
            print(f"  {count} models, no budget:", flush=True)
            replica = RunningReplica.start(
                models, models.names[:count], fresh_db(), logs / f"n{count}"
            )
            try:
                cell, calls = replica.load_hot(models, options, [])
                counts.append(replica.summary([cell], calls))
            finally:
                replica.group.stop()
        per_model = next(c for c in counts if c["models"] == 100)["per_model_bytes"]
        budget_mb = math.ceil(ACCEPTANCE_MODELS / 2 * per_model / 2**20)
        only_hot, budgeted = acceptance(models, options, budget_mb, fresh_db, logs)
    finally:
        redis.stop()
    return {
        "counts": counts,
        "only_hot": only_hot,
        "budgeted": budgeted,
        "cold_per_s": COLD_PER_S,
        "slices": ACCEPTANCE_SLICES,
        "goal_ratio": GOAL_RATIO,
    }


def acceptance(
    models: ModelSet,
    options: Options,
    budget_mb: int,
    fresh_db: Callable[[], str],
    logs: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A replica of only the hot models beside one of 200 models under a budget for half,
    both running; the same hot load on each in turn, slice after slice.

    NOTE: interleaved short slices rather than one long cell each: on a machine shared with
    other work, the noise then falls on both sides alike; each side's median slice counts."""
    names = models.names[:ACCEPTANCE_MODELS]
    print(f"  only the {HOT_MODELS} hot models, and {ACCEPTANCE_MODELS} models in {budget_mb} MiB")
    only_hot = RunningReplica.start(models, names[:HOT_MODELS], fresh_db(), logs / "only-hot")
    try:
        budgeted = RunningReplica.start(models, names, fresh_db(), logs / "budget", budget_mb)
    except Exception:
        only_hot.group.stop()
        raise
    slice_options = Options(
        max(2.0, options.duration_s / 2), options.warmup_s, options.grpc_client, options.tools
    )
    cold = budgeted.cold_cycle
    cells: dict[str, list[dict[str, Any]]] = {"only_hot": [], "budgeted": []}
    calls: dict[str, dict[str, int]] = {"only_hot": {}, "budgeted": {}}
    try:
        for _ in range(ACCEPTANCE_SLICES):
            done = sum(n for k, n in calls["budgeted"].items() if k.startswith("cold"))
            for key, replica, cold_names in (
                ("only_hot", only_hot, []),
                # each slice goes on where the last one stopped in the cycle
                ("budgeted", budgeted, cold[done % len(cold) :] + cold[: done % len(cold)]),
            ):
                cell, slice_calls = replica.load_hot(models, slice_options, cold_names)
                cells[key].append(cell)
                for outcome, n in slice_calls.items():
                    calls[key][outcome] = calls[key].get(outcome, 0) + n
        return (
            only_hot.summary(cells["only_hot"], calls["only_hot"]),
            budgeted.summary(cells["budgeted"], calls["budgeted"]),
        )
    finally:
        only_hot.group.stop()
        budgeted.group.stop()


def goals(models: dict[str, Any] | None) -> list[Any]:
    from benchmarks.report import TIMES, Goal

    goal = f"budget for half of {ACCEPTANCE_MODELS} models: hot p99 vs a replica of only them"
    if not models:
        return [Goal(goal, f"≤ {GOAL_RATIO:g}{TIMES}", "not measured in this run", None, None)]
    budgeted, only_hot = models["budgeted"]["hot"], models["only_hot"]["hot"]
    pairs = list(
        zip(
            models["budgeted"].get("hot_p99_ms_by_slice", [budgeted["p99_ms"]]),
            models["only_hot"].get("hot_p99_ms_by_slice", [only_hot["p99_ms"]]),
            strict=True,
        )
    )
    # NOTE: the median of each slice pair's ratio: the two slices of a pair run one right
    # after the other, so the machine's slower swings (other work on it) cancel out.
    ratio = statistics.median(b / o for b, o in pairs)
    errors = models["budgeted"].get("hot_errors", budgeted["errors"]) + sum(
        n for k, n in models["budgeted"]["churn"].items() if k.startswith("hot") and "ok" not in k
    )
    slices = models.get("slices")
    measured = (
        f"median of {len(pairs)} slice pairs' ratios; by slice "
        + ", ".join(f"{b:.1f}/{o:.1f}" for b, o in pairs)
        + " ms"
        if slices
        else f"{budgeted['p99_ms']:.2f} ms vs {only_hot['p99_ms']:.2f} ms"
    )
    if errors:
        measured += f"; {errors} hot errors"
    return [
        Goal(goal, f"≤ {GOAL_RATIO:g}{TIMES}", measured, ratio, ratio <= GOAL_RATIO and not errors)
    ]


def section(models: dict[str, Any] | None) -> list[str]:
    """The report's table: memory per model, start-to-ready and the hot model's p99."""
    if not models:
        return []
    mib = 2**20
    out = [
        "",
        "## Many models per replica (one replica, fleet mode, h2load c=16 on one hot model)",
        "",
        "| replica | models | resident at ready / end | MiB per model | resident MiB | RSS MiB "
        "| start-to-ready s | hot req/s | hot p99 ms | evictions | cold loads waited |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    rows = [*(("no budget", c) for c in models["counts"])]
    rows += [("only the hot models", models["only_hot"])]
    rows += [(f"budget {models['budgeted']['budget_mb']} MiB", models["budgeted"])]
    for name, row in rows:
        hot = row["hot"]
        waited = sum(row["cold_load_waits"].values())
        out.append(
            f"| {name} | {row['models']} | {row['resident_at_ready']} / {row['resident']} "
            f"| {row['per_model_bytes'] / mib:.2f} "
            f"| {row['resident_bytes'] / mib:.1f} | {row['rss_bytes'] / mib:.0f} "
            f"| {row['ready_s']:.2f} | {hot['rps']:,.0f} | {hot['p99_ms']:.2f} "
            f"| {row['evictions']} | {waited} |"
        )
    budgeted = models["budgeted"]
    (goal,) = goals(models)
    first, last = models["counts"][0], models["counts"][-1]
    rss_per_model = (last["rss_bytes"] - first["rss_bytes"]) / (last["models"] - first["models"])
    out += [
        "",
        "MiB per model is what the budget counts (the heap each load took, `inference.memory`); "
        f"the resident set grew {rss_per_model / mib:.2f} MiB per model from "
        f"{first['models']} to {last['models']} models.",
        "",
        f"Beside the hot load, {models['cold_per_s']} rounds a second of background requests: the "
        "other hot models once each and, on the budgeted replica, the next of the other models, "
        f"each a load (calls: {budgeted['churn']}). The table's hot figures are each side's "
        f"median slice: {budgeted['hot']['p99_ms'] / models['only_hot']['hot']['p99_ms']:.2f}x "
        f"apart. Goal: {goal.goal}, {goal.target}: "
        f"{goal.ratio or 0:.2f}x ({goal.measured}, budgeted/only hot): "
        f"{'met' if goal.met else 'NOT met'}.",
    ]
    return out
