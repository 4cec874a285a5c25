"""`POST /webhook/github` with payloads signed exactly as GitHub signs them."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from urllib.parse import urlencode

import httpx
import pytest

from tests.gateway.conftest import (
    MAX_WEBHOOK_BYTES,
    SECRET,
    Gateway,
    LocalRepo,
    make_local_repo,
    queued_job_ids,
    signed_post,
)

NOTEBOOK = "notebooks/train.ipynb"


@pytest.fixture(scope="module")
def local_repo(tmp_path_factory: pytest.TempPathFactory, api: httpx.Client) -> LocalRepo:
    repo = make_local_repo(tmp_path_factory.mktemp("git"), "webhook-test")
    response = api.post(
        "/repos", json={"github_url": repo.url, "branch": "main", "notebook_path": NOTEBOOK}
    )
    assert response.status_code == 201, response.text
    return repo


def pipeline_count(api: httpx.Client) -> int:
    return api.get("/pipelines", params={"size": 1}).json()["total"]


@pytest.fixture
def nothing_created(api: httpx.Client, gateway: Gateway):
    """Assert the test created no pipeline and queued no job."""
    before, jobs = pipeline_count(api), queued_job_ids(gateway.redis_url)
    yield
    assert pipeline_count(api) == before
    assert queued_job_ids(gateway.redis_url) == jobs


def test_signed_push_that_changes_the_notebook_queues_one_pipeline(
    api: httpx.Client, gateway: Gateway, local_repo: LocalRepo
):
    sha = local_repo.commit({NOTEBOOK: '{"cells": [], "v": 2}'})
    delivery = str(uuid.uuid4())
    response = signed_post(
        api, local_repo.push_payload(sha, modified=[NOTEBOOK]), delivery=delivery
    )
    assert response.status_code == 202, response.text
    assert response.json()["replayed"] is False
    (pipeline_id,) = response.json()["pipeline_ids"]
    pipeline = api.get(f"/pipelines/{pipeline_id}").json()
    assert pipeline["status"] == "queued" and pipeline["trigger"] == "push"
    assert pipeline["commit_sha"] == sha and pipeline["branch"] == "main"
    assert pipeline_id in queued_job_ids(gateway.redis_url)

    # The same delivery again (GitHub's "redeliver") creates nothing new.
    before = pipeline_count(api)
    again = signed_post(api, local_repo.push_payload(sha, modified=[NOTEBOOK]), delivery=delivery)
    assert again.status_code == 202
    assert again.json() == {"pipeline_ids": [pipeline_id], "replayed": True}
    assert pipeline_count(api) == before
    assert api.post(f"/pipelines/{pipeline_id}/cancel").status_code == 200


def test_github_repository_matches_by_full_name_or_clone_url(api: httpx.Client):
    registered = api.post(
        "/repos",
        json={"github_url": "https://github.com/Acme/Hooked", "notebook_path": "train.ipynb"},
    ).json()
    base = {
        "ref": "refs/heads/main",
        "after": "b" * 40,
        "commits": [{"added": ["train.ipynb"], "modified": []}],
    }
    for repository in (
        {"full_name": "ACME/hooked", "clone_url": "https://example.invalid/x.git"},
        {"full_name": "someone/else", "clone_url": "https://github.com/acme/HOOKED.git"},
        {"full_name": "someone/else", "html_url": "https://github.com/acme/hooked/"},
    ):
        response = signed_post(api, {**base, "repository": repository})
        assert response.status_code == 202, response.text
        (pipeline_id,) = response.json()["pipeline_ids"]
        assert api.get(f"/pipelines/{pipeline_id}").json()["repository_id"] == registered["id"]
        api.post(f"/pipelines/{pipeline_id}/cancel")


def test_wrong_or_missing_signature_is_401_and_creates_nothing(
    api: httpx.Client, local_repo: LocalRepo, nothing_created
):
    payload = local_repo.push_payload("c" * 40, modified=[NOTEBOOK])
    body = json.dumps(payload).encode()
    for kwargs in (
        {"secret": "not-the-secret"},
        {"signature": ""},
        {"signature": "sha1=abc"},
        {"signature": "sha256=" + "0" * 64},
    ):
        response = signed_post(api, body, **kwargs)
        assert response.status_code == 401, kwargs
        assert set(response.json()) == {"detail"}
    # A body changed after signing fails too.
    good = signed_post(api, body, signature=None, event="ping")
    assert good.status_code == 200
    sig = good.request.headers["X-Hub-Signature-256"]
    assert signed_post(api, body + b" ", signature=sig).status_code == 401


def test_pushes_that_must_not_run_create_nothing(
    api: httpx.Client, local_repo: LocalRepo, nothing_created
):
    sha = local_repo.commit({"README.md": "changed\n"})
    cases = [
        local_repo.push_payload(sha, modified=["README.md"]),  # notebook untouched
        local_repo.push_payload(sha, branch="dev", modified=[NOTEBOOK]),  # another branch
        {**local_repo.push_payload(sha, modified=[NOTEBOOK]), "ref": "refs/tags/v1"},
        {**local_repo.push_payload("0" * 40, modified=[NOTEBOOK]), "deleted": True},
    ]
    for payload in cases:
        response = signed_post(api, payload)
        assert response.status_code == 202, response.text
        assert response.json() == {"pipeline_ids": [], "replayed": False}


def test_ping_and_other_events(api: httpx.Client, nothing_created):
    response = signed_post(api, {"zen": "Keep it logically awesome.", "hook_id": 1}, event="ping")
    assert response.status_code == 200
    assert response.json() == {"status": "pong", "zen": "Keep it logically awesome."}
    response = signed_post(api, {"action": "opened"}, event="issues")
    assert response.status_code == 202
    assert response.json() == {"pipeline_ids": [], "replayed": False}


def test_form_encoded_deliveries_are_understood(api: httpx.Client, local_repo: LocalRepo):
    sha = local_repo.commit({NOTEBOOK: '{"cells": [], "v": 3}'})
    payload = json.dumps(local_repo.push_payload(sha, added=[NOTEBOOK]))
    body = urlencode({"payload": payload}).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    response = api.post(
        "/webhook/github",
        content=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": signature,
        },
    )
    assert response.status_code == 202, response.text
    (pipeline_id,) = response.json()["pipeline_ids"]
    api.post(f"/pipelines/{pipeline_id}/cancel")


def test_bad_deliveries_are_4xx(api: httpx.Client, gateway: Gateway, nothing_created):
    response = signed_post(api, b"{not json")
    assert response.status_code == 422
    assert response.json()["detail"].startswith("webhook body is not valid JSON")
    for payload, message in (
        ([1, 2], "webhook body must be a JSON object"),
        ({"ref": "refs/heads/main"}, "push payload has no repository object"),
        ({"repository": {}, "after": "a" * 40}, "push payload has no ref"),
    ):
        response = signed_post(api, json.dumps(payload).encode())
        assert response.status_code == 422
        assert response.json()["detail"] == message
    response = signed_post(api, b"x" * (MAX_WEBHOOK_BYTES + 1))
    assert response.status_code == 413
    assert response.json() == {"detail": f"webhook body exceeds {MAX_WEBHOOK_BYTES} bytes"}

    # Unsigned garbage is refused before anything is read into a pipeline.
    response = httpx.post(
        f"{gateway.url}/webhook/github", content=b"x", headers={"X-GitHub-Event": "push"}
    )
    assert response.status_code == 401
    response = signed_post(api, {"zen": "x"}, event="")
    assert response.status_code == 422
    assert response.json()["detail"] == "missing X-GitHub-Event header"
