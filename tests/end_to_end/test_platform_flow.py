"""Issue 5's end-to-end test: the platform that `make run` starts, used as a new user would,
only through its public interfaces (gateway REST, webhook and WebSocket; the fleet's gRPC
port with tritonclient), with a real git repository:

push the example notebook -> signed webhook -> live log until the pipeline ends -> same answer
over REST and gRPC -> push a retuned notebook -> version 2 serves -> roll back to 1 under a
continuous predict load, no request failing -> push a broken notebook (through
scripts/test_pipeline.sh) -> it fails with its stage and reason while 1 keeps serving ->
stop (nothing left) and start again on the same data -> version 1 serves, over REST and gRPC.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from benchmarks.processes import REPO_ROOT
from tests.end_to_end import notebooks
from tests.end_to_end.conftest import StackFactory
from tests.end_to_end.public_api import grpc_predict, predict_load_around, watch_pipeline
from tests.end_to_end.stack import WEBHOOK_SECRET, Stack, stack_env
from tests.gateway.conftest import LocalRepo, git, make_local_repo, signed_post

MODEL = "iris-classifier"
"""MODEL_NAME in the example notebook."""
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]]
"""One iris of each species."""
PIPELINE_TIMEOUT_S = 240
LOAD_CLIENTS = 4


def push(api: httpx.Client, repo: LocalRepo, sha: str, **files: list[str]) -> tuple[str, float]:
    """Deliver the push of `sha` as GitHub would; the pipeline it started and when."""
    sent = time.monotonic()
    response = signed_post(api, repo.push_payload(sha, **files), secret=WEBHOOK_SECRET)
    assert response.status_code == 202, response.text
    assert response.json()["replayed"] is False
    (pipeline_id,) = response.json()["pipeline_ids"]
    return pipeline_id, sent


def follow_to_success(stack: Stack, api: httpx.Client, pipeline_id: str, sha: str) -> dict:
    """Watch the pipeline's WebSocket log until the gateway closes it; it must have streamed
    its lines while running and ended `succeeded`."""
    watch = asyncio.run(watch_pipeline(stack.gateway, pipeline_id, PIPELINE_TIMEOUT_S))
    pipeline = api.get(f"/pipelines/{pipeline_id}").json()
    assert watch.close_code == 1000
    assert watch.end == "succeeded", (pipeline.get("error"), watch.lines[-15:])
    assert [e["seq"] for e in watch.entries] == list(range(1, len(watch.entries) + 1))
    # Live, not replayed at the end: the notebook's lines came well before the end message.
    executing = [
        t
        for e, t in zip(watch.entries, watch.arrivals, strict=True)
        if "[executing]" in e.get("line", "")
    ]
    # NOTE: a replay delivers every line within milliseconds; from the notebook's first line
    # to the end, a warm box's pipeline still takes over half a second (convert, verify,
    # register, deploy, record).
    assert executing and watch.arrivals[-1] - executing[0] > 0.2, watch.lines
    assert any("accuracy:" in line for line in watch.lines), watch.lines
    assert pipeline["status"] == "succeeded" and pipeline["commit_sha"] == sha
    assert pipeline["model_name"] == MODEL
    return pipeline


def predict(api: httpx.Client) -> dict[str, Any]:
    response = api.post(f"/models/{MODEL}/predict", json={"data": ROWS})
    assert response.status_code == 200, response.text
    return response.json()


def assert_same_answer(rest: dict[str, Any], grpc: dict[str, Any]) -> None:
    """REST through the gateway and native gRPC on the fleet's port give one answer."""
    assert "error" not in grpc, grpc
    assert grpc["model_version"] == rest["version"]
    assert grpc["outputs"]["label"] == rest["predictions"]
    np.testing.assert_allclose(grpc["outputs"]["probabilities"], rest["probabilities"], atol=1e-6)


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two answers to ROWS from the same model version (row batching may round differently)."""
    return a["predictions"] == b["predictions"] and np.allclose(
        a["probabilities"], b["probabilities"], atol=1e-6
    )


def queue_wait_s(pipeline: dict[str, Any]) -> float:
    """From the webhook's pipeline row to a worker starting it."""
    created, started = (datetime.fromisoformat(pipeline[k]) for k in ("created_at", "started_at"))
    return (started - created).total_seconds()


def model_entry(api: httpx.Client) -> dict[str, Any]:
    (entry,) = [m for m in api.get("/models").json()["models"] if m["name"] == MODEL]
    return entry


@pytest.mark.slow
@pytest.mark.timeout(720)
def test_push_serve_rollback_fail_restart(
    new_stack: StackFactory, timings: dict[str, float], tmp_path: Path
) -> None:
    began = time.monotonic()
    env = stack_env(tmp_path / "data", replicas=2)
    stack = new_stack("platform", env)
    timings["start_to_ready_cold_s"] = stack.start()
    with httpx.Client(base_url=stack.gateway, timeout=30) as api:
        # 1-2. A user's repository with the example notebook, registered with the platform.
        repo = make_local_repo(
            tmp_path / "git", "iris-training", {notebooks.PATH: notebooks.example()}
        )
        sha1 = git("rev-parse", "HEAD", cwd=repo.work)
        registered = api.post(
            "/repos",
            json={"github_url": repo.url, "branch": "main", "notebook_path": notebooks.PATH},
        )
        assert registered.status_code == 201, registered.text

        # 3-4. GitHub's push delivery; the live log until the pipeline ends.
        first_id, sent = push(api, repo, sha1, added=[notebooks.PATH])
        first = follow_to_success(stack, api, first_id, sha1)
        assert first["model_version"] == "1"

        # 5. Version 1 answers, the same over REST (gateway) and gRPC (the fleet's shared port).
        v1 = predict(api)
        timings["push_to_served_first_s"] = time.monotonic() - sent
        timings["first_pipeline_queue_wait_s"] = queue_wait_s(first)
        timings["first_pipeline_duration_s"] = first["duration_s"]
        assert v1["version"] == "1" and v1["predictions"] == [0, 1, 2]
        assert_same_answer(v1, grpc_predict(stack.grpc_address, MODEL, ROWS))

        # 6. A retuned notebook: version 2 serves, and it is another model.
        sha2 = repo.commit({notebooks.PATH: notebooks.retuned(c=0.05, version="2.0.0")})
        second_id, sent = push(api, repo, sha2, modified=[notebooks.PATH])
        second = follow_to_success(stack, api, second_id, sha2)
        assert (second["model_version"], second["notebook_version"]) == ("2", "2.0.0")
        v2 = predict(api)
        timings["push_to_served_second_s"] = time.monotonic() - sent
        timings["second_pipeline_queue_wait_s"] = queue_wait_s(second)
        timings["second_pipeline_duration_s"] = second["duration_s"]
        assert v2["version"] == "2"
        assert not np.allclose(v2["probabilities"], v1["probabilities"], atol=1e-3), (v1, v2)

        # 7. Roll back to 1 while clients predict continuously: no request fails, and once the
        # rollback has answered every replica serves 1.
        load = asyncio.run(
            predict_load_around(
                stack.gateway,
                MODEL,
                ROWS,
                lambda client: client.post(f"/models/{MODEL}/rollback", json={"version": "1"}),
                clients=LOAD_CLIENTS,
                before_s=1.5,
                after_s=1.5,
                limit_s=90,
            )
        )
        rollback = load.action_result
        assert rollback.status_code == 200, rollback.text
        assert (rollback.json()["active_version"], rollback.json()["previous_version"]) == (
            "1",
            "2",
        )
        assert load.failures() == [], load.failures()[:5]
        before = {a.version for a in load.answers if a.received < load.action_started}
        after = {a.version for a in load.answers if a.sent > load.action_done}
        assert {a.version for a in load.answers} <= {"1", "2"}
        assert before == {"2"} and after == {"1"}, (before, after)
        timings["rollback_under_load_s"] = load.action_done - load.action_started
        timings["load_requests"] = len(load.answers)
        assert same_model(predict(api), v1)
        entry = model_entry(api)
        assert entry["active_version"] == "1" and "2" in entry["warm_versions"], entry

        # 8. A broken notebook, delivered by scripts/test_pipeline.sh (openssl's HMAC, curl): the
        # pipeline fails with its stage and reason; version 1 serves throughout.
        sha3 = repo.commit({notebooks.PATH: notebooks.broken_training()})
        sent = time.monotonic()
        script = subprocess.Popen(
            ["bash", str(REPO_ROOT / "scripts" / "test_pipeline.sh"), "--repo", repo.url,
             "--commit", sha3, "--gateway", stack.gateway, "--timeout", str(PIPELINE_TIMEOUT_S)],
            env={"PATH": stack.process.env["PATH"], "GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        served_meanwhile = []
        while script.poll() is None and time.monotonic() - sent < PIPELINE_TIMEOUT_S + 30:
            served_meanwhile.append(predict(api)["version"])
            time.sleep(0.5)
        output = script.communicate(timeout=30)[0]
        timings["push_to_failed_s"] = time.monotonic() - sent
        assert script.returncode == 1, output
        (third_id,) = re.findall(r"^pipeline (\S+)", output, re.MULTILINE)
        third = api.get(f"/pipelines/{third_id}").json()
        assert third["status"] == "failed" and third["commit_sha"] == sha3, third
        assert third["error"]["stage"] == "executing", third["error"]
        reason = third["error"]["message"]
        assert "(mlops:training) failed: ValueError" in reason, reason
        assert "inconsistent numbers of samples" in reason, reason
        assert "failed in executing:" in output, output
        assert served_meanwhile and set(served_meanwhile) == {"1"}, served_meanwhile
        assert same_model(predict(api), v1)

        # 9. Stop (nothing left behind), start again on the same data: version 1 is still the one
        # served, over REST and gRPC; repositories, pipelines and MLflow's versions are back.
    timings["stop_s"] = stack.stop()
    restarted = new_stack("platform-restarted", env)
    timings["start_to_ready_warm_s"] = restarted.start()
    with httpx.Client(base_url=restarted.gateway, timeout=30) as api:
        again = predict(api)
        assert again["version"] == "1"
        assert same_model(again, v1)
        assert_same_answer(again, grpc_predict(restarted.grpc_address, MODEL, ROWS))
        entry = model_entry(api)
        assert entry["active_version"] == "1", entry
        assert {"1", "2"} <= {v["version"] for v in entry["versions"]}, entry
        assert [r["github_url"] for r in api.get("/repos").json()] == [repo.url]
        statuses = {p["id"]: p["status"] for p in api.get("/pipelines").json()["items"]}
        assert statuses == {first_id: "succeeded", second_id: "succeeded", third_id: "failed"}
    timings["second_stop_s"] = restarted.stop()
    # Every service connected to Redis with its generated password; none printed it.
    password = (tmp_path / "data" / "redis_password").read_text().strip()
    assert password not in stack.output() + restarted.output()
    timings["test_total_s"] = time.monotonic() - began
