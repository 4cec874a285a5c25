"""The rollout API without a rollout running: policies (validated, naming the field), the
empty records, and promote/abort answering 404."""

from __future__ import annotations

import httpx


def test_a_model_without_a_policy_deploys_at_once(api: httpx.Client) -> None:
    policy = api.get("/models/never-set/policy")
    assert policy.status_code == 200
    assert policy.json()["strategy"] == "immediate"


def test_a_policy_is_kept_as_given(api: httpx.Client) -> None:
    wanted = {"strategy": "canary", "steps": [5, 25, 60], "step_interval_s": 30, "max_hold_s": 90}
    put = api.put("/models/policy-kept/policy", json=wanted)
    assert put.status_code == 200, put.text
    got = api.get("/models/policy-kept/policy").json()
    assert {k: got[k] for k in wanted} == wanted
    assert got["min_requests"] == 100 and got["min_agreement"] == 0.95


def test_bad_policies_are_422_naming_the_field(api: httpx.Client) -> None:
    for body, field in [
        ({"steps": [10, 100]}, "steps"),
        ({"strategy": "blue-green"}, "strategy"),
        ({"max_error_rate": -1}, "max_error_rate"),
        ({"steps": [50, 10]}, "steps must increase"),
        ({"max_hold_s": 1, "step_interval_s": 10}, "max_hold_s"),
        ({"unknown": 1}, "unknown"),
    ]:
        response = api.put("/models/bad-policy/policy", json=body)
        assert response.status_code == 422, (body, response.text)
        assert field in response.text, (body, response.text)
    assert api.get("/models/bad-policy/policy").json()["strategy"] == "immediate"


def test_no_rollout_means_404_and_empty_records(api: httpx.Client) -> None:
    assert api.get("/models/quiet-model/rollouts").json() == []
    assert api.get("/models/quiet-model/history").json() == {"model": "quiet-model", "events": []}
    for response in (
        api.get("/models/quiet-model/rollouts/current"),
        api.post("/models/quiet-model/rollouts/current/promote"),
        api.post("/models/quiet-model/rollouts/current/abort"),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["detail"] == "model 'quiet-model' has no rollout running"
