"""End to end: a real worker process runs notebooks from local git repositories against real
Redis, a real MLflow server and a real kernel, and a real inference replica in fleet mode
serves what it registers."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import grpc
import joblib
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from redis.asyncio import Redis
from sklearn.datasets import load_iris

from mlops_core import fleet_state, logstream
from mlops_core.db import STAGES
from mlops_core.oip import infer_request, response_arrays
from mlops_core.protocol import open_inference_pb2_grpc as pb_grpc
from tests.pipeline_worker.conftest import REPO_TOKEN, SECRETS, Platform
from tests.pipeline_worker.support import (
    EXAMPLE_NOTEBOOK,
    TINY_MODEL,
    commit,
    contract_notebook,
    create_pipeline,
    enqueue,
    git_repo,
    wait_for_status,
)

X, _ = load_iris(return_X_y=True)


@pytest.fixture(scope="module")
def worker(start_worker, fleet):
    return start_worker()


@pytest.fixture(scope="module")
async def example_run(platform: Platform, worker, tmp_path_factory):
    """The example notebook, pushed twice; the pipeline is for the first commit."""
    origin = tmp_path_factory.mktemp("example-origin")
    notebook = EXAMPLE_NOTEBOOK.read_text()
    first = git_repo(origin, {"notebooks/train.ipynb": notebook})
    commit(origin, {"notebooks/train.ipynb": notebook.replace('\\"1.0.0\\"', '\\"2.0.0\\"')})
    pipeline_id = create_pipeline(
        platform.sessions,
        origin.as_uri(),
        first,
        notebook_path="notebooks/train.ipynb",
        token=REPO_TOKEN,
    )
    await enqueue(platform.redis_url, pipeline_id)
    pipeline = await wait_for_status(platform.sessions, pipeline_id, timeout_s=240)
    return pipeline, first


async def test_example_notebook_runs_through_every_stage(
    example_run, platform: Platform, run_dir: Path
):
    pipeline, sha = example_run
    assert pipeline.status == "succeeded", (pipeline.error_stage, pipeline.error_message)
    assert pipeline.commit_sha == sha
    assert (pipeline.model_name, pipeline.model_version) == ("iris-classifier", "1")
    assert pipeline.notebook_version == "1.0.0", "the exact commit ran, not the branch head"
    # The wait in the queue, every stage, and the MLflow record kept after the deploy.
    assert list(pipeline.stage_timings) == ["queued", *[s.value for s in STAGES], "recording"]
    log = pipeline.log or ""
    for stage in STAGES:
        assert f"[{stage.value}] started" in log
    assert "cell 5 (mlops:training) started" in log
    assert "cell 6 (mlops:evaluation) | accuracy:" in log
    assert "parity: 38 rows (notebook): 0 label mismatches" in log
    redis = Redis.from_url(platform.redis_url)
    # NOTE: the worker ends the row before it writes the log's end marker (so a watcher that
    # sees the marker finds the row final); wait briefly for the marker.
    for _ in range(50):
        entries = await logstream.history(redis, pipeline.id)
        if entries and "end" in entries[-1]:
            break
        await asyncio.sleep(0.1)
    await redis.aclose()
    assert entries[-1] == {"seq": len(entries), "end": "succeeded"}
    assert all(e["line"].startswith("[") for e in entries[:-1])


async def test_mlflow_holds_the_run_metric_artifacts_and_version(
    example_run, mlflow_uri: str, tmp_path: Path
):
    import mlflow

    pipeline, sha = example_run
    client = MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(pipeline.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["accuracy"] > 0.9, "the notebook's log_metric landed in our run"
    assert run.data.params["C"] == "1.0"
    assert run.data.params["commit"] == sha
    assert run.data.params["pipeline_id"] == pipeline.id
    assert run.data.params["notebook_version"] == "1.0.0"
    assert run.data.tags["mlops.repository"].startswith("file://")
    artifacts = {
        f.path
        for d in ("onnx", "joblib", "notebook")
        for f in client.list_artifacts(run.info.run_id, d)
    }
    assert artifacts == {
        "onnx/model.onnx",
        "onnx/signature.json",
        "joblib/model.joblib",
        "notebook/executed.ipynb",
    }
    version = client.get_model_version("iris-classifier", "1")
    assert version.run_id == run.info.run_id and version.tags["commit"] == sha
    mlflow.set_tracking_uri(mlflow_uri)
    local = Path(
        mlflow.artifacts.download_artifacts("models:/iris-classifier/1", dst_path=str(tmp_path))
    )
    assert {"model.onnx", "signature.json"} <= set(os.listdir(local))


async def test_the_fleet_serves_the_new_version_like_the_joblib_model(
    example_run, platform: Platform, fleet, mlflow_uri: str, tmp_path: Path
):
    pipeline, _ = example_run
    redis = Redis.from_url(platform.redis_url)
    assert await fleet_state.get_desired_model(
        redis, "iris-classifier"
    ) == fleet_state.DesiredModel("1", [])
    await redis.aclose()
    client = MlflowClient(tracking_uri=mlflow_uri)
    path = client.download_artifacts(pipeline.mlflow_run_id, "joblib/model.joblib", str(tmp_path))
    model = joblib.load(path)
    rows = X.astype(np.float32)
    async with grpc.aio.insecure_channel(fleet.grpc_address) as channel:
        response = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            infer_request("iris-classifier", {"input": rows})
        )
    outputs = response_arrays(response)
    assert response.model_version == "1"
    assert np.array_equal(outputs["label"].reshape(-1), model.predict(rows.astype(np.float64)))
    assert np.allclose(
        outputs["probabilities"], model.predict_proba(rows.astype(np.float64)), atol=1e-4
    )


FAILING_CELL = dict(
    TINY_MODEL, **{"mlops:training": "x = 1\nraise ValueError('bad data\\nrow 7 is empty')"}
)
NO_MODEL = dict(TINY_MODEL, **{"mlops:export": "print('forgot to save')"})
UNCONVERTIBLE = dict(
    TINY_MODEL,
    **{
        "mlops:training": "from sklearn.neighbors import NearestCentroid\n"
        "model = NearestCentroid().fit(X, y)"
    },
)
SECRET_PROBE = dict(
    NO_MODEL,
    **{
        "mlops:training": "import os, json\n"
        "print('ENV-NAMES', json.dumps(sorted(os.environ)))\n"
        f"print('leaked token: {REPO_TOKEN}')"
    },
)


async def test_failures_name_their_cause_and_leave_the_serving_version(
    example_run, platform: Platform, tmp_path: Path
):
    """Every failure stops at its stage with an actionable message; `iris-classifier` v1 keeps
    serving. (The failing notebooks all name that model.)"""
    cases = {
        "missing tag": (
            {"mlops:training": "pass"},
            "validating",
            "missing required cell tags: mlops:preprocessing, mlops:export",
        ),
        "failing cell": (
            FAILING_CELL,
            "executing",
            "cell 3 (mlops:training) failed: ValueError: row 7 is empty",
        ),
        "no model": (NO_MODEL, "executing", "saved no model"),
        "unconvertible": (
            UNCONVERTIBLE,
            "converting",
            "skl2onnx cannot convert estimator NearestCentroid",
        ),
        "secret probe": (SECRET_PROBE, "executing", "saved no model"),
    }
    ids = {}
    for i, (name, (cells, _, _)) in enumerate(cases.items()):
        origin = tmp_path / f"origin-{i}"
        sha = git_repo(origin, {"train.ipynb": contract_notebook(cells, "iris-classifier")})
        ids[name] = create_pipeline(platform.sessions, str(origin), sha, token=REPO_TOKEN)
    ids["clone failure"] = create_pipeline(
        platform.sessions, (tmp_path / "no-such-repo").as_uri(), "", token=REPO_TOKEN
    )
    cases["clone failure"] = ({}, "cloning", "cannot fetch refs/heads/main")
    for pipeline_id in ids.values():
        await enqueue(platform.redis_url, pipeline_id)
    results = {
        name: await wait_for_status(platform.sessions, pid, timeout_s=180)
        for name, pid in ids.items()
    }
    for name, (_, stage, message) in cases.items():
        pipeline = results[name]
        assert (pipeline.status, pipeline.error_stage) == ("failed", stage), (
            name,
            pipeline.error_message,
        )
        assert message in (pipeline.error_message or ""), (name, pipeline.error_message)
        assert pipeline.model_version is None
    redis = Redis.from_url(platform.redis_url)
    desired = await fleet_state.get_desired_model(redis, "iris-classifier")
    replicas = await fleet_state.live_replicas(redis)
    probe_log = await logstream.history(redis, ids["secret probe"])
    await redis.aclose()
    assert desired == fleet_state.DesiredModel("1", [])
    assert [r.models["iris-classifier"].active for r in replicas] == ["1"]

    env_line = next(e["line"] for e in probe_log if "ENV-NAMES" in e.get("line", ""))
    names = set(json.loads(env_line.split("ENV-NAMES ", 1)[1]))
    assert not names & {*SECRETS, "REDIS_URL", "DATABASE_URL"}
    assert {"MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI"} <= names
    assert any("leaked token: ***" in e.get("line", "") for e in probe_log)
    everything = json.dumps(
        [r.log for r in results.values()] + [r.error_message for r in results.values()]
    )
    everything += json.dumps(probe_log)
    for secret in [*SECRETS.values(), REPO_TOKEN]:
        assert secret not in everything


async def test_pipelines_of_one_model_register_in_order_beside_another_model(
    example_run, platform: Platform, tmp_path: Path
):
    ids = []
    for i, model in enumerate(["ordered", "ordered", "beside"]):
        origin = tmp_path / f"origin-{i}"
        sha = git_repo(origin, {"train.ipynb": contract_notebook(TINY_MODEL, model)})
        ids.append(create_pipeline(platform.sessions, str(origin), sha))
    await asyncio.gather(*(enqueue(platform.redis_url, pid) for pid in ids))
    first, second, beside = [
        await wait_for_status(platform.sessions, pid, timeout_s=180) for pid in ids
    ]
    for pipeline in (first, second, beside):
        assert pipeline.status == "succeeded", (pipeline.error_stage, pipeline.error_message)
    assert sorted([first.model_version, second.model_version]) == ["1", "2"]
    assert beside.model_version == "1"
    last = max((first, second), key=lambda p: p.finished_at)
    redis = Redis.from_url(platform.redis_url)
    desired = await fleet_state.get_desired_model(redis, "ordered")
    await redis.aclose()
    assert desired is not None and desired.active == last.model_version == "2"
    assert desired.warm == ["1"]
