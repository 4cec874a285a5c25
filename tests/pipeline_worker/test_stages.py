"""Each stage as a plain function: real git, real scikit-learn, skl2onnx and onnxruntime,
real Redis for the deploy stage. No worker, no kernel."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import pytest
from redis.asyncio import Redis
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neighbors import NearestCentroid
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from mlops_core import fleet_state
from mlops_core.errors import PipelineError
from mlops_core.fleet_state import DesiredModel
from mlops_core.settings import Settings
from pipeline_worker.scrub import Redactor, box_environment, secret_values
from pipeline_worker.stages.clone import clone, clone_environment, clone_url
from pipeline_worker.stages.convert import convert
from pipeline_worker.stages.deploy import deploy
from pipeline_worker.stages.validate import notebook_file, validate
from pipeline_worker.stages.verify import sample_rows, verify
from tests.conftest import new_redis_db
from tests.pipeline_worker.support import (
    EXAMPLE_NOTEBOOK,
    TINY_MODEL,
    commit,
    contract_notebook,
    git_repo,
)

X, Y = load_iris(return_X_y=True)


async def no_log(_: str) -> None:
    return None


# --- validate --------------------------------------------------------------------------


def test_example_notebook_follows_the_contract():
    config = validate(EXAMPLE_NOTEBOOK)
    assert (config.model_name, config.version) == ("iris-classifier", "1.0.0")


def test_every_missing_tag_is_named_at_once(tmp_path: Path):
    path = tmp_path / "nb.ipynb"
    path.write_text(contract_notebook({"mlops:training": "pass"}))
    with pytest.raises(PipelineError) as caught:
        validate(path)
    assert caught.value.stage == "validating"
    assert "mlops:preprocessing, mlops:export" in caught.value.message


def test_config_must_assign_literals_and_a_valid_name(tmp_path: Path):
    nb = nbformat.reads(contract_notebook(TINY_MODEL), as_version=4)
    path = tmp_path / "nb.ipynb"
    nb.cells[1].source = 'MODEL_NAME = "a" + "b"\nVERSION = compute()'
    nbformat.write(nb, path)
    with pytest.raises(PipelineError, match=r"MODEL_NAME must be assigned a literal.*VERSION"):
        validate(path)
    nb.cells[1].source = 'MODEL_NAME = "../etc"\nVERSION = 3'
    nbformat.write(nb, path)
    with pytest.raises(PipelineError, match="not a valid model name"):
        validate(path)


def test_a_notebook_may_declare_its_rollout_and_bad_values_name_the_field(tmp_path: Path):
    nb = nbformat.reads(contract_notebook(TINY_MODEL), as_version=4)
    path = tmp_path / "nb.ipynb"
    nb.cells[
        1
    ].source = 'MODEL_NAME = "m"\nVERSION = 1\nROLLOUT = {"strategy": "canary", "steps": [5, 20]}'
    nbformat.write(nb, path)
    config = validate(path)
    assert config.rollout is not None and config.rollout.weights() == [0.05, 0.2]
    nb.cells[1].source = 'MODEL_NAME = "m"\nVERSION = 1\nROLLOUT = {"max_error_rate": 3}'
    nbformat.write(nb, path)
    with pytest.raises(PipelineError, match=r"ROLLOUT in the mlops:config cell: max_error_rate"):
        validate(path)
    nb.cells[1].source = 'MODEL_NAME = "m"\nVERSION = 1\nROLLOUT = "canary"'
    nbformat.write(nb, path)
    with pytest.raises(PipelineError, match="ROLLOUT must be a dict literal"):
        validate(path)


def test_notebook_path_must_stay_in_the_checkout(tmp_path: Path):
    with pytest.raises(PipelineError, match="leaves the repository"):
        notebook_file(tmp_path, "../outside.ipynb")
    with pytest.raises(PipelineError, match="not found in the commit"):
        notebook_file(tmp_path, "missing.ipynb")


def test_broken_json_is_reported(tmp_path: Path):
    path = tmp_path / "nb.ipynb"
    path.write_text("{not json")
    with pytest.raises(PipelineError, match="not a valid notebook"):
        validate(path)


# --- clone -----------------------------------------------------------------------------


def test_local_repositories_need_the_setting(tmp_path: Path):
    with pytest.raises(PipelineError, match="MLOPS_ALLOW_LOCAL_REPOS"):
        clone_url(tmp_path.as_uri(), Settings(allow_local_repos=False))
    with pytest.raises(PipelineError, match="MLOPS_ALLOW_LOCAL_REPOS"):
        clone_url(str(tmp_path), Settings(allow_local_repos=False))
    assert clone_url(str(tmp_path), Settings(allow_local_repos=True)) == tmp_path.as_uri()


def test_urls_with_credentials_are_refused_and_owner_name_uses_the_base_url():
    with pytest.raises(PipelineError, match="contains credentials"):
        clone_url("https://user:ghp_x@github.com/o/r", Settings())
    settings = Settings(github_base_url="https://ghe.example.com/")
    assert clone_url("octo/repo", settings) == "https://ghe.example.com/octo/repo.git"


def test_the_token_travels_as_a_git_header_never_in_the_url():
    env = clone_environment("ghp_secret123")
    assert env["GIT_CONFIG_COUNT"] == "3"
    assert env["GIT_CONFIG_KEY_2"] == "http.extraHeader"
    assert env["GIT_CONFIG_VALUE_2"].startswith("Authorization: Basic ")
    assert "ghp_secret123" not in json.dumps(env)  # base64-encoded, and only in this env
    assert env["GIT_TERMINAL_PROMPT"] == "0"


async def test_clone_checks_out_the_exact_commit_or_the_branch_head(tmp_path: Path):
    origin = tmp_path / "origin"
    first = git_repo(origin, {"train.ipynb": "first"})
    second = commit(origin, {"train.ipynb": "second"})
    settings = Settings(allow_local_repos=True)
    lines: list[str] = []

    async def log(line: str) -> None:
        lines.append(line)

    result = await clone(
        origin.as_uri(),
        "main",
        first,
        tmp_path / "a",
        token="tok-abcdef",
        settings=settings,
        log=log,
    )
    assert result.commit_sha == first
    assert (tmp_path / "a" / "train.ipynb").read_text() == "first"
    head = await clone(
        str(origin), "main", "HEAD", tmp_path / "b", token=None, settings=settings, log=log
    )
    assert head.commit_sha == second
    assert "tok-abcdef" not in "\n".join(lines)


async def test_unclonable_repository_fails_at_cloning(tmp_path: Path):
    settings = Settings(allow_local_repos=True)
    with pytest.raises(PipelineError) as caught:
        await clone(
            (tmp_path / "nowhere").as_uri(),
            "main",
            "",
            tmp_path / "c",
            token=None,
            settings=settings,
            log=no_log,
        )
    assert caught.value.stage == "cloning"
    assert "cannot fetch refs/heads/main" in caught.value.message
    origin = tmp_path / "origin"
    git_repo(origin, {"a": "1"})
    with pytest.raises(PipelineError, match=r"cannot fetch|is not in"):
        await clone(
            origin.as_uri(),
            "main",
            "ab" * 20,
            tmp_path / "d",
            token=None,
            settings=settings,
            log=no_log,
        )


# --- convert and verify ----------------------------------------------------------------


def test_classifier_converts_with_plain_label_and_probability_tensors():
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(X, Y)
    converted = convert(model)
    sig = converted.signature
    assert [(t.name, t.datatype, t.shape) for t in sig.inputs] == [("input", "FP32", [-1, 4])]
    assert [(t.name, t.datatype) for t in sig.outputs] == [
        ("label", "INT64"),
        ("probabilities", "FP32"),
    ]
    assert sig.class_labels == [0, 1, 2]
    rows, source = sample_rows(model, None)
    assert source == "training range"
    report = verify(model, converted.onnx_bytes, rows, source)
    assert report.label_mismatches == 0 and report.max_probability_diff < 1e-4


def test_regressor_parity_within_tolerance_on_standard_normal_rows():
    model = RandomForestRegressor(n_estimators=10, random_state=0).fit(X[:, :3], X[:, 3])
    rows, source = sample_rows(model, None)
    assert source == "standard normal"
    report = verify(model, convert(model).onnx_bytes, rows, source)
    assert report.max_value_diff < 1e-4


def test_unconvertible_estimator_is_named():
    with pytest.raises(PipelineError) as caught:
        convert(NearestCentroid().fit(X, Y))
    assert caught.value.stage == "converting"
    assert "NearestCentroid" in caught.value.message


def test_a_mismatch_fails_verification_with_the_figures():
    model = LinearRegression().fit(X[:, :3], X[:, 3])
    other = LinearRegression().fit(X[:, :3], X[:, 0])
    rows, source = sample_rows(make_pipeline(MinMaxScaler(), model).fit(X[:, :3], X[:, 3]), None)
    with pytest.raises(PipelineError) as caught:
        verify(model, convert(other).onnx_bytes, rows, source)
    assert caught.value.stage == "verifying"
    assert "max |value diff|" in caught.value.message and "tolerances" in caught.value.message


def test_sample_rows_from_the_notebook_must_fit_the_model(tmp_path: Path):
    model = LogisticRegression(max_iter=300).fit(X, Y)
    np.save(tmp_path / "ok.npy", X[:5].astype(np.float32))
    rows, source = sample_rows(model, tmp_path / "ok.npy")
    assert (rows.shape, source) == ((5, 4), "notebook")
    np.save(tmp_path / "bad.npy", X[:5, :2])
    with pytest.raises(PipelineError, match=r"shape \(5, 2\)"):
        sample_rows(model, tmp_path / "bad.npy")


# --- deploy ----------------------------------------------------------------------------


def test_next_desired_keeps_earlier_versions_warm_within_the_bound():
    previous = DesiredModel(active="3", warm=["2", "1"])
    next_desired = fleet_state.next_desired
    assert next_desired(previous, "4", keep_versions=3) == DesiredModel("4", ["3", "2"])
    assert next_desired(None, "1", keep_versions=3) == DesiredModel("1", [])
    assert next_desired(previous, "2", keep_versions=3) == DesiredModel("2", ["3", "1"]), "rollback"
    assert next_desired(previous, "5", keep_versions=1) == DesiredModel("5", [])


def test_versions_sort_by_number_and_anything_else_last():
    versions = ["10", "x", "2", "²", "1"]
    assert sorted(versions, key=fleet_state.version_key) == ["1", "2", "10", "x", "²"]


async def test_rollout_timeout_restores_the_previous_version(redis_url: str):
    redis = Redis.from_url(new_redis_db(redis_url))
    try:
        await fleet_state.set_desired(redis, "m", DesiredModel("1"))
        with pytest.raises(PipelineError) as caught:
            await deploy(redis, "m", "2", timeout_s=0.5, keep_versions=3, log=no_log)
        assert caught.value.stage == "deploying"
        assert "version 1 stays active" in caught.value.message
        assert await fleet_state.get_desired_model(redis, "m") == DesiredModel("1")
        with pytest.raises(PipelineError):
            await deploy(redis, "fresh", "1", timeout_s=0.3, keep_versions=3, log=no_log)
        assert await fleet_state.get_desired_model(redis, "fresh") is None
    finally:
        await redis.aclose()


# --- secrets ---------------------------------------------------------------------------


def test_the_box_environment_is_built_not_filtered():
    base = {
        "GITHUB_WEBHOOK_SECRET": "s1",
        "MLOPS_API_KEY": "s2",
        "REDIS_URL": "redis://:pw@h/0",
        "DATABASE_URL": "postgresql://u:pw@h/db",
        "SOME_TOKEN_X": "s3",
        "HOME": "/root",
        "PATH": "/opt/evil/bin",
        "OPENBLAS_CORETYPE": "Haswell",
        "UNRELATED": "x",
    }
    env = box_environment({"MLFLOW_RUN_ID": "r", "GITHUB_TOKEN": "leak"}, base)
    assert set(env) == {
        "PATH",
        "HOME",
        "LANG",
        "PYTHONUNBUFFERED",
        "MPLBACKEND",
        "OPENBLAS_CORETYPE",
        "MLFLOW_RUN_ID",
    }
    assert env["HOME"] == "/tmp" and "/opt/evil/bin" not in env["PATH"]


def test_redactor_masks_secret_values_and_url_passwords():
    values = secret_values(
        {"REDIS_URL": "redis://:hunter22@h/0", "X_TOKEN": "abcdef123"}, ["tok-999999"]
    )
    redact = Redactor(values)
    assert redact("a hunter22 b abcdef123 c tok-999999") == "a *** b *** c ***"
