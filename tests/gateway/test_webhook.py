"""`POST /webhook/github` with payloads signed exactly as GitHub signs them."""

from __future__ import annotations

import asyncio
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
    assert response.json()["replayed"] is False and response.json()["duplicate_of"] == []
    (pipeline_id,) = response.json()["pipeline_ids"]
    pipeline = api.get(f"/pipelines/{pipeline_id}").json()
    assert pipeline["status"] == "queued" and pipeline["trigger"] == "push"
    assert pipeline["commit_sha"] == sha and pipeline["branch"] == "main"
    assert pipeline_id in queued_job_ids(gateway.redis_url)

    # The same delivery again (GitHub's "redeliver") creates nothing new.
    before = pipeline_count(api)
    again = signed_post(api, local_repo.push_payload(sha, modified=[NOTEBOOK]), delivery=delivery)
    assert again.status_code == 202
    assert again.json() == {"pipeline_ids": [pipeline_id], "duplicate_of": [], "replayed": True}
    assert pipeline_count(api) == before
    assert api.post(f"/pipelines/{pipeline_id}/cancel").status_code == 200


def test_github_repository_matches_by_full_name_or_clone_url(api: httpx.Client):
    registered = api.post(
        "/repos",
        json={"github_url": "https://github.com/Acme/Hooked", "notebook_path": "train.ipynb"},
    ).json()
    base = {"ref": "refs/heads/main", "commits": [{"added": ["train.ipynb"], "modified": []}]}
    for sha, repository in (
        ("b" * 40, {"full_name": "ACME/hooked", "clone_url": "https://example.invalid/x.git"}),
        (
            "c" * 40,
            {"full_name": "someone/else", "clone_url": "https://github.com/acme/HOOKED.git"},
        ),
        ("d" * 40, {"full_name": "someone/else", "html_url": "https://github.com/acme/hooked/"}),
    ):
        # A commit each: the same commit pushed again would be a replay.
        response = signed_post(api, {**base, "after": sha, "repository": repository})
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
        assert response.json() == {"pipeline_ids": [], "duplicate_of": [], "replayed": False}


def test_ping_and_other_events(api: httpx.Client, nothing_created):
    response = signed_post(api, {"zen": "Keep it logically awesome.", "hook_id": 1}, event="ping")
    assert response.status_code == 200
    assert response.json() == {"status": "pong", "zen": "Keep it logically awesome."}
    response = signed_post(api, {"action": "opened"}, event="issues")
    assert response.status_code == 202
    assert response.json() == {"pipeline_ids": [], "duplicate_of": [], "replayed": False}


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
        (
            {"repository": {}, "ref": "refs/heads/main", "after": "HEAD~1"},
            "push payload's 'after' is not a commit id (40 or 64 hex digits)",
        ),
    ):
        response = signed_post(api, json.dumps(payload).encode())
        assert response.status_code == 422
        assert response.json()["detail"] == message
    response = signed_post(api, b"x" * (MAX_WEBHOOK_BYTES + 1))
    assert response.status_code == 413
    assert response.json() == {
        "detail": f"request body exceeds {MAX_WEBHOOK_BYTES} bytes (MLOPS_MAX_WEBHOOK_BYTES)"
    }

    # Unsigned garbage is refused before anything is read into a pipeline.
    response = httpx.post(
        f"{gateway.url}/webhook/github", content=b"x", headers={"X-GitHub-Event": "push"}
    )
    assert response.status_code == 401
    response = signed_post(api, {"zen": "x"}, event="")
    assert response.status_code == 422
    assert response.json()["detail"] == "missing X-GitHub-Event header"


# --- replays: the delivery id is not signed, so a signed push is known by what it asks for ---


def signed_headers(body: bytes, delivery: str) -> dict[str, str]:
    """A push delivery's headers; an empty `delivery` sends none (the id is optional)."""
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-Hub-Signature-256": signature,
    }
    if delivery:
        headers["X-GitHub-Delivery"] = delivery
    return headers


def pipelines_of_commit(api: httpx.Client, repository_id: int, sha: str) -> list[dict]:
    page = api.get("/pipelines", params={"repository_id": repository_id, "size": 100}).json()
    assert page["total"] <= 100
    return [p for p in page["items"] if p["commit_sha"] == sha]


def cancel_all(api: httpx.Client, pipeline_ids) -> None:
    for pipeline_id in pipeline_ids:
        api.post(f"/pipelines/{pipeline_id}/cancel")


def test_a_signed_push_sent_again_under_new_delivery_ids_starts_nothing(
    api: httpx.Client, gateway: Gateway, local_repo: LocalRepo
):
    sha = local_repo.commit({NOTEBOOK: '{"cells": [], "v": "replay"}'})
    payload = local_repo.push_payload(sha, modified=[NOTEBOOK])
    body = json.dumps(payload).encode()
    first = signed_post(api, body)
    assert first.status_code == 202, first.text
    (pipeline_id,) = first.json()["pipeline_ids"]
    repository_id = api.get(f"/pipelines/{pipeline_id}").json()["repository_id"]
    jobs = queued_job_ids(gateway.redis_url)

    # The captured body under fresh delivery ids; then the same push serialised differently.
    for again in (body, body, json.dumps(payload, indent=2).encode()):
        response = signed_post(api, again, delivery=str(uuid.uuid4()))
        assert response.status_code == 202, response.text
        assert response.json() == {
            "pipeline_ids": [],
            "duplicate_of": [pipeline_id],
            "replayed": False,
        }
    assert [p["id"] for p in pipelines_of_commit(api, repository_id, sha)] == [pipeline_id]
    assert queued_job_ids(gateway.redis_url) == jobs
    cancel_all(api, [pipeline_id])


async def deliver_at_once(gateway: Gateway, body: bytes, deliveries: list[str]):
    async with gateway.async_client() as client:
        return await asyncio.gather(
            *(
                client.post("/webhook/github", content=body, headers=signed_headers(body, d))
                for d in deliveries
            )
        )


def test_concurrent_deliveries_of_one_push_start_one_pipeline(
    api: httpx.Client, gateway: Gateway, local_repo: LocalRepo
):
    sha = local_repo.commit({NOTEBOOK: '{"cells": [], "v": "concurrent"}'})
    body = json.dumps(local_repo.push_payload(sha, added=[NOTEBOOK])).encode()
    shared_id = str(uuid.uuid4())  # GitHub's own redelivery racing the first attempt too
    # NOTE: deliveries without an id record nothing before they look for the push, so on
    # SQLite only they race in the open (with one, the id's insert happens to serialise them);
    # without push_runs' key this test starts several pipelines.
    deliveries = [shared_id, shared_id] + [str(uuid.uuid4()) for _ in range(4)] + [""] * 6
    responses = asyncio.run(deliver_at_once(gateway, body, deliveries))
    assert [r.status_code for r in responses] == [202] * len(deliveries), [
        r.text for r in responses
    ]
    answers = [r.json() for r in responses]
    named = {i for a in answers for i in a["pipeline_ids"] + a["duplicate_of"]}
    assert len(named) == 1, answers
    (pipeline_id,) = named
    started = [a for a in answers if a["pipeline_ids"] and not a["replayed"]]
    assert len(started) == 1, answers
    repository_id = api.get(f"/pipelines/{pipeline_id}").json()["repository_id"]
    assert [p["id"] for p in pipelines_of_commit(api, repository_id, sha)] == [pipeline_id]
    cancel_all(api, [pipeline_id])


def test_a_manual_trigger_runs_a_pushed_commit_again_and_a_new_commit_runs(
    api: httpx.Client, local_repo: LocalRepo
):
    sha = local_repo.commit({NOTEBOOK: '{"cells": [], "v": "manual"}'})
    body = json.dumps(local_repo.push_payload(sha, modified=[NOTEBOOK])).encode()
    (pushed,) = signed_post(api, body).json()["pipeline_ids"]
    repository_id = api.get(f"/pipelines/{pushed}").json()["repository_id"]

    manual = api.post(f"/repos/{repository_id}/trigger")
    assert manual.status_code == 202, manual.text
    assert manual.json()["commit_sha"] == sha and manual.json()["trigger"] == "manual"
    assert manual.json()["id"] != pushed
    # The push sent again afterwards is still the push's duplicate, not a third run.
    assert signed_post(api, body).json() == {
        "pipeline_ids": [],
        "duplicate_of": [pushed],
        "replayed": False,
    }
    ids = {p["id"] for p in pipelines_of_commit(api, repository_id, sha)}
    assert ids == {pushed, manual.json()["id"]}

    newer = local_repo.commit({NOTEBOOK: '{"cells": [], "v": "manual-2"}'})
    response = signed_post(api, local_repo.push_payload(newer, modified=[NOTEBOOK]))
    assert response.status_code == 202, response.text
    (next_run,) = response.json()["pipeline_ids"]
    assert response.json()["duplicate_of"] == []
    assert api.get(f"/pipelines/{next_run}").json()["commit_sha"] == newer
    cancel_all(api, [pushed, manual.json()["id"], next_run])
