"""Progressive delivery end to end (issue 12), on the platform `make run` starts, under
continuous REST and native gRPC load:

a good candidate goes 10 -> 50 -> 100 % and is promoted with no failed request and MLflow's
`champion` alias moved; a candidate that refuses the callers' inputs is rolled back within a
step and only requests routed to it failed; a shadow candidate whose labels disagree is
refused without any caller receiving one of its answers; with too little traffic a rollout
holds, then aborts at `max_hold_s`; every decision's figures are in the rollout record and in
the pipeline's log.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from mlops_core.protocol import open_inference_pb2 as pb
from mlops_core.protocol import open_inference_pb2_grpc as pb_grpc
from tests.end_to_end import notebooks
from tests.end_to_end.public_api import LoadRun, predict_load_around
from tests.end_to_end.stack import Stack, stack_env, started_stack
from tests.end_to_end.test_platform_flow import MODEL, ROWS, push
from tests.gateway.conftest import LocalRepo, git, make_local_repo

PIPELINE_TIMEOUT_S = 240
FAST_CANARY = {
    "strategy": "canary",
    "steps": [10, 50],
    "step_interval_s": 3,
    "min_requests": 20,
    "max_error_rate": 0.02,
    # NOTE: generous: two cores shared by the load, the replicas and the test make tails noisy.
    "max_p99_ratio": 20.0,
    "min_agreement": 0.7,
    "max_hold_s": 60,
}


@pytest.fixture(scope="module")
def rollout_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("rollouts")
    env = {
        **stack_env(workdir / "data", replicas=2),
        "MLOPS_ROLLOUT_TICK_S": "0.5",
        "MLOPS_MIRROR_RATE": "0.5",
        "MLOPS_SHADOW_RATE": "0.5",
    }
    with started_stack("rollouts", workdir, env) as stack:
        yield stack


class GrpcLoad:
    """Clients on the fleet's gRPC port, back to back, naming no version; every answer kept."""

    def __init__(self, address: str, clients: int = 2) -> None:
        self.address = address
        self.clients = clients
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> GrpcLoad:
        for _ in range(self.clients):
            thread = threading.Thread(target=self._loop, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _loop(self) -> None:
        rows = np.asarray(ROWS, dtype=np.float32)
        request = pb.ModelInferRequest(model_name=MODEL)
        tensor = request.inputs.add(name="input", datatype="FP32", shape=list(rows.shape))
        tensor.contents.fp32_contents.extend(rows.ravel().tolist())
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not self._stop.is_set():
                try:
                    response = stub.ModelInfer(request, timeout=10)
                    self.versions[response.model_version] += 1
                except grpc.RpcError as exc:
                    self.failures.append(f"{exc.code().name}: {exc.details()}")


class KeyedCaller:
    """One REST caller sending the same routing key back to back; the versions it got, in
    order."""

    def __init__(self, gateway: str, key: str) -> None:
        self.gateway = gateway
        self.key = key
        self.versions: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> KeyedCaller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        with httpx.Client(base_url=self.gateway, timeout=10) as client:
            while not self._stop.is_set():
                response = client.post(
                    f"/models/{MODEL}/predict",
                    json={"data": ROWS},
                    headers={"X-Routing-Key": self.key},
                )
                if response.status_code == 200:
                    self.versions.append(response.json()["version"])
                time.sleep(0.02)


def put_policy(api: httpx.Client, policy: dict[str, Any]) -> None:
    response = api.put(f"/models/{MODEL}/policy", json=policy)
    assert response.status_code == 200, response.text


def wait_pipeline(api: httpx.Client, pipeline_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + PIPELINE_TIMEOUT_S
    while time.monotonic() < deadline:
        pipeline = api.get(f"/pipelines/{pipeline_id}").json()
        if pipeline["status"] in ("succeeded", "failed", "cancelled"):
            return pipeline
        time.sleep(0.5)
    raise AssertionError(f"pipeline {pipeline_id} still {pipeline['status']}")


def champion_alias(stack: Stack, timeout_s: float = 20.0, want: str | None = None) -> str | None:
    """MLflow's `champion` alias of the model (waits up to timeout_s for `want`)."""
    mlflow = f"http://127.0.0.1:{stack.env['MLOPS_MLFLOW_PORT']}"
    deadline = time.monotonic() + timeout_s
    version = None
    while time.monotonic() < deadline:
        got = httpx.get(
            f"{mlflow}/api/2.0/mlflow/registered-models/alias",
            params={"name": MODEL, "alias": "champion"},
            timeout=10,
        )
        version = got.json()["model_version"]["version"] if got.status_code == 200 else None
        if want is None or version == want:
            return version
        time.sleep(0.5)
    return version


def push_under_load(
    stack: Stack, api: httpx.Client, repo: LocalRepo, notebook: str, message: str
) -> tuple[dict[str, Any], LoadRun, GrpcLoad]:
    sha = repo.commit({notebooks.PATH: notebook})

    async def pushed(client: httpx.AsyncClient) -> dict[str, Any]:
        pipeline_id, _ = await asyncio.to_thread(push, api, repo, sha, modified=[notebooks.PATH])
        return await asyncio.to_thread(wait_pipeline, api, pipeline_id)

    with GrpcLoad(stack.grpc_address) as grpc_load, KeyedCaller(stack.gateway, "caller-1") as keyed:
        run = asyncio.run(
            predict_load_around(
                stack.gateway, MODEL, ROWS, pushed, clients=3, before_s=1.0, after_s=1.0,
                limit_s=PIPELINE_TIMEOUT_S + 60,
            )
        )  # fmt: skip
    # NOTE: one key stays on one side: once on the candidate, never back (weights only grow).
    if "2" in keyed.versions and keyed.versions[-1] == "2":
        first = keyed.versions.index("2")
        assert set(keyed.versions[first:]) == {"2"}, keyed.versions
    return run.action_result, run, grpc_load


@pytest.mark.slow
def test_rollouts(rollout_stack: Stack, tmp_path: Path) -> None:
    stack = rollout_stack
    api = httpx.Client(base_url=stack.gateway, timeout=30)
    repo = make_local_repo(tmp_path / "git", "iris-rollouts", {notebooks.PATH: notebooks.example()})
    registered = api.post(
        "/repos", json={"github_url": repo.url, "branch": "main", "notebook_path": notebooks.PATH}
    )
    assert registered.status_code == 201, registered.text

    # Version 1, deployed at once (no policy yet): it becomes the champion.
    sha = git("rev-parse", "HEAD", cwd=repo.work)
    first, _ = push(api, repo, sha, added=[notebooks.PATH])
    assert wait_pipeline(api, first)["status"] == "succeeded"
    assert champion_alias(stack, want="1") == "1"
    assert api.get(f"/models/{MODEL}/policy").json()["strategy"] == "immediate"

    # A bad policy is refused naming the field.
    bad = api.put(f"/models/{MODEL}/policy", json={**FAST_CANARY, "steps": [10, 150]})
    assert bad.status_code == 422 and "steps" in bad.text, bad.text

    # --- a good candidate: 10 -> 50 -> 100 %, promoted, nothing failed ---
    put_policy(api, FAST_CANARY)
    pipeline, rest, grpc_load = push_under_load(
        stack, api, repo, notebooks.retuned(0.5, "1.1.0"), "retuned"
    )
    assert pipeline["status"] == "succeeded", (pipeline["error"], pipeline["rollout"])
    assert pipeline["rollout"]["state"] == "promoted", pipeline
    assert rest.failures() == [] and grpc_load.failures == []
    rest_versions = Counter(a.version for a in rest.answers)
    assert rest_versions["1"] > 0 and rest_versions["2"] > 0, rest_versions
    assert grpc_load.versions["1"] > 0 and grpc_load.versions["2"] > 0, grpc_load.versions
    assert champion_alias(stack, want="2") == "2"
    record = api.get(f"/models/{MODEL}/rollouts").json()[0]
    assert record["state"] == "promoted" and record["candidate"] == "2"
    assert [s["weight"] for s in record["steps"]] == [0.1, 0.5]
    assert [s["decision"] for s in record["steps"]] == ["advance", "promote"]
    for step in record["steps"]:
        figures = step["figures"]
        assert figures["candidate"]["requests"] >= FAST_CANARY["min_requests"], figures
        assert figures["candidate"]["errors"] == 0 and figures["champion"]["p99_ms"] > 0
        assert figures["agreement"]["compared"] > 0
    log = api.get(f"/pipelines/{pipeline['id']}/logs").json()
    lines = [entry["line"] for entry in log["lines"]]
    assert any("step 1 at 10%: advance: step passed:" in line for line in lines), lines[-20:]
    assert any("step 2 at 50%: promote: every step passed:" in line for line in lines)
    history = api.get(f"/models/{MODEL}/history").json()["events"]
    assert (history[0]["alias"], history[0]["version"]) in {("champion", "2"), ("challenger", None)}

    # --- a candidate that refuses the callers' width: rolled back within one step ---
    pipeline, rest, grpc_load = push_under_load(
        stack, api, repo, notebooks.narrower(), "three features"
    )
    assert pipeline["status"] == "failed" and pipeline["rollout"]["state"] == "rolled_back"
    assert "error rate" in pipeline["error"]["message"], pipeline["error"]
    record = api.get(f"/models/{MODEL}/rollouts").json()[0]
    (decided,) = [d for d in record["decisions"] if d["action"] == "rollback"]
    started = record["steps"][0]["started_at"]
    assert decided["step"] == 0, record["decisions"]
    took = _seconds(decided["at"]) - _seconds(started)
    assert took <= FAST_CANARY["step_interval_s"] + 2, took
    # Only requests routed to the candidate failed: each says it was the width.
    assert rest.failures(), "some requests should have reached the candidate"
    assert all(a.status == 422 and "3" in (a.error or "") for a in rest.failures())
    assert len(rest.failures()) < len(rest.answers) * 0.3
    assert all("INVALID_ARGUMENT" in f for f in grpc_load.failures)
    assert champion_alias(stack) == "2"
    assert all(e["version"] != "3" for e in api.get(f"/models/{MODEL}/history").json()["events"]
               if e["alias"] == "champion")  # fmt: skip

    # --- a shadow whose labels disagree: refused, no caller ever saw its answers ---
    shadow = {**FAST_CANARY, "strategy": "shadow", "min_agreement": 0.9}
    pipeline, rest, grpc_load = push_under_load(
        stack, api, repo, notebooks.with_rollout(notebooks.shifted_labels(), "2.0.0", shadow),
        "shadow with other labels",
    )  # fmt: skip
    assert pipeline["status"] == "failed" and pipeline["rollout"]["state"] == "rolled_back"
    assert "agreement" in pipeline["error"]["message"], pipeline["error"]
    assert rest.failures() == [] and grpc_load.failures == []
    assert {a.version for a in rest.answers} == {"2"}
    assert set(grpc_load.versions) == {"2"}
    assert champion_alias(stack) == "2"

    # --- too little traffic: holds, then aborts at max_hold_s ---
    put_policy(api, {**FAST_CANARY, "min_requests": 1000, "step_interval_s": 2, "max_hold_s": 5})
    sha = repo.commit({notebooks.PATH: notebooks.retuned(2.0, "3.0.0")})
    quiet, _ = push(api, repo, sha, modified=[notebooks.PATH])
    pipeline = wait_pipeline(api, quiet)
    assert pipeline["status"] == "failed" and pipeline["rollout"]["state"] == "aborted"
    assert "max_hold_s" in pipeline["error"]["message"], pipeline["error"]
    record = api.get(f"/models/{MODEL}/rollouts").json()[0]
    assert [d["action"] for d in record["decisions"]] == ["hold", "abort"], record["decisions"]
    assert predict_version(api) == "2"

    # --- by hand: promote a running canary; a rollback during one aborts it ---
    put_policy(api, {**FAST_CANARY, "step_interval_s": 600, "max_hold_s": 600})
    sha = repo.commit({notebooks.PATH: notebooks.retuned(3.0, "4.0.0")})
    promoted, _ = push(api, repo, sha, modified=[notebooks.PATH])
    current = wait_current(api, "6")
    assert current["steps"][0]["weight"] == 0.1 and current["state"] == "running"
    by_hand = api.post(f"/models/{MODEL}/rollouts/current/promote")
    assert by_hand.status_code == 200 and by_hand.json()["state"] == "promoted", by_hand.text
    assert wait_pipeline(api, promoted)["status"] == "succeeded"
    assert predict_version(api) == "6" and champion_alias(stack, want="6") == "6"

    sha = repo.commit({notebooks.PATH: notebooks.retuned(4.0, "5.0.0")})
    rolled, _ = push(api, repo, sha, modified=[notebooks.PATH])
    wait_current(api, "7")
    back = api.post(f"/models/{MODEL}/rollback", json={"version": "2"})
    assert back.status_code == 200, back.text
    pipeline = wait_pipeline(api, rolled)
    assert pipeline["status"] == "failed" and pipeline["rollout"]["state"] == "aborted"
    assert "rolled back by hand to version 2" in pipeline["error"]["message"]
    assert predict_version(api) == "2" and champion_alias(stack, want="2") == "2"
    assert api.get(f"/models/{MODEL}/rollouts/current").status_code == 404


def wait_current(api: httpx.Client, candidate: str, timeout_s: float = PIPELINE_TIMEOUT_S) -> dict:
    """The running rollout of `candidate`, once it started (and its figures are live)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        current = api.get(f"/models/{MODEL}/rollouts/current")
        body = current.json()
        if current.status_code == 200 and body["candidate"] == candidate and body["live"]:
            return body
        time.sleep(0.3)
    raise AssertionError(f"no rollout of version {candidate} started")


def predict_version(api: httpx.Client) -> str:
    response = api.post(f"/models/{MODEL}/predict", json={"data": ROWS})
    assert response.status_code == 200, response.text
    return response.json()["version"]


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
