"""Repositories: registration and its validation, tokens never shown, delete, trigger."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import Gateway, LocalRepo, make_local_repo, queued_job_ids

TOKEN = "ghp_neverShowThisToken0123456789abcdef"


@pytest.fixture(scope="module")
def local_repo(tmp_path_factory: pytest.TempPathFactory) -> LocalRepo:
    return make_local_repo(tmp_path_factory.mktemp("git"), "repos-test")


def register(api: httpx.Client, **fields) -> httpx.Response:
    body = {"branch": "main", "notebook_path": "notebooks/train.ipynb", **fields}
    return api.post("/repos", json=body)


def test_register_github_repository_never_returns_the_token(api: httpx.Client, gateway: Gateway):
    response = register(
        api, github_url="https://github.com/Acme/Iris-Training.git/", github_token=TOKEN
    )
    assert response.status_code == 201, response.text
    repo = response.json()
    assert repo["github_url"] == "https://github.com/Acme/Iris-Training"
    assert repo["full_name"] == "acme/iris-training"
    assert repo["has_token"] is True
    listing = api.get("/repos")
    one = api.get(f"/repos/{repo['id']}")
    for r in (response, listing, one):
        assert TOKEN not in r.text and "github_token" not in r.text
    assert one.json() == repo
    assert repo["id"] in [r["id"] for r in listing.json()]
    # The same repository, spelled differently, is a duplicate.
    again = register(api, github_url="https://github.com/acme/iris-training")
    assert again.status_code == 409
    assert "already registered" in again.json()["detail"]
    assert TOKEN not in gateway.process.log_tail(1_000_000)


def test_a_second_notebook_or_branch_is_not_a_duplicate(api: httpx.Client):
    url = "https://github.com/acme/two-notebooks"
    assert register(api, github_url=url).status_code == 201
    assert register(api, github_url=url, notebook_path="other/train.ipynb").status_code == 201
    r = register(api, github_url=url, branch="dev")
    assert r.status_code == 201 and r.json()["has_token"] is False


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"github_url": "https://gitlab.com/a/b"}, "github_url must be on github.com"),
        ({"github_url": "http://github.com/a/b"}, "github_url must be a https:// URL"),
        ({"github_url": "https://user:pw@github.com/a/b"}, "must not contain credentials"),
        ({"github_url": "https://github.com/a"}, "github_url must name one repository"),
        ({"github_url": "https://github.com/a/b/tree/main"}, "github_url must name one repository"),
        ({"github_url": "https://github.com/a/b?x=1"}, "must not have a query"),
        ({"github_url": "https://github.com/a/.."}, "github_url must name one repository"),
        ({"github_url": "git@github.com:a/b.git"}, "github_url must be a https:// URL"),
        ({"github_url": ""}, "github_url is empty"),
        ({"github_url": "/does/not/exist"}, "does not exist or is not a directory"),
        ({"github_url": "file://relative/path"}, "does not exist"),
        ({"branch": "feature..x"}, "is not a valid git branch name"),
        ({"branch": "has space"}, "is not a valid git branch name"),
        ({"branch": "-x"}, "is not a valid git branch name"),
        ({"branch": "x.lock"}, "is not a valid git branch name"),
        ({"branch": ""}, "branch must be 1 to 255 characters"),
        ({"notebook_path": "../escape.ipynb"}, "must not contain '..'"),
        ({"notebook_path": "a/../../b.ipynb"}, "must not contain '..'"),
        ({"notebook_path": "/etc/train.ipynb"}, "must be relative"),
        ({"notebook_path": "train.py"}, "must name a .ipynb file"),
        ({"notebook_path": "dir\\train.ipynb"}, "forward slashes"),
        ({"github_token": "has space"}, "body.github_token: String should match pattern"),
        ({"github_token": ""}, "body.github_token: String should have at least 1 character"),
        ({"unknown": 1}, "body.unknown: Extra inputs are not permitted"),
        ({"notebook_path": None}, "body.notebook_path: Input should be a valid string"),
        ({"branch": 3}, "body.branch: Input should be a valid string"),
    ],
)
def test_bad_registrations_are_422_with_a_clear_message(
    api: httpx.Client, fields: dict, message: str
):
    body = {"github_url": "https://github.com/acme/valid", **fields}
    response = register(api, **body)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_malformed_bodies_and_ids_are_4xx(api: httpx.Client):
    response = api.post("/repos", content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "JSON decode error" in response.json()["detail"]
    assert api.post("/repos", json={}).status_code == 422
    assert api.post("/repos", json=[]).status_code == 422
    for bad in ("abc", "0", "-1", "99999999999999999999999"):
        assert api.get(f"/repos/{bad}").status_code == 422, bad
    response = api.get("/repos/424242")
    assert response.status_code == 404
    assert response.json() == {"detail": "repository 424242 not found"}


def test_delete_repository(api: httpx.Client):
    repo = register(api, github_url="https://github.com/acme/short-lived").json()
    assert api.delete(f"/repos/{repo['id']}").status_code == 204
    assert api.get(f"/repos/{repo['id']}").status_code == 404
    assert api.delete(f"/repos/{repo['id']}").status_code == 404


def test_trigger_runs_the_branch_head(api: httpx.Client, gateway: Gateway, local_repo: LocalRepo):
    repo = register(api, github_url=local_repo.url, github_token=TOKEN).json()
    assert repo["full_name"] == str(local_repo.bare.resolve())
    head = local_repo.commit({"notebooks/train.ipynb": '{"cells": [], "nbformat": 4}\n'})
    response = api.post(f"/repos/{repo['id']}/trigger")
    assert response.status_code == 202, response.text
    pipeline = response.json()
    assert pipeline["commit_sha"] == head
    assert pipeline["trigger"] == "manual" and pipeline["status"] == "queued"
    assert pipeline["repository_id"] == repo["id"] and pipeline["branch"] == "main"
    assert pipeline["id"] in queued_job_ids(gateway.redis_url)
    assert api.post(f"/pipelines/{pipeline['id']}/cancel").status_code == 200


def test_trigger_errors(api: httpx.Client, tmp_path: Path, local_repo: LocalRepo):
    repo = register(api, github_url=local_repo.url, branch="no-such-branch").json()
    response = api.post(f"/repos/{repo['id']}/trigger")
    assert response.status_code == 409
    assert (
        response.json()["detail"]
        == f"branch 'no-such-branch' does not exist in {repo['github_url']}"
    )
    gone = make_local_repo(tmp_path, "gone")
    repo = register(api, github_url=gone.url).json()
    shutil.rmtree(gone.bare)
    response = api.post(f"/repos/{repo['id']}/trigger")
    assert response.status_code == 502
    assert response.json()["detail"].startswith("cannot read branch 'main' of file://")
    assert api.post("/repos/424242/trigger").status_code == 404
