"""Health, readiness, security, startup refusal and the OpenAPI document."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from benchmarks.processes import free_port
from tests.conftest import new_redis_db
from tests.gateway.conftest import (
    API_KEY,
    Gateway,
    gateway_env,
    launch_gateway,
    run_gateway_briefly,
)


def test_health_needs_no_key(gateway: Gateway):
    response = httpx.get(f"{gateway.url}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/repos"),
        ("POST", "/repos"),
        ("GET", "/repos/1"),
        ("DELETE", "/repos/1"),
        ("POST", "/repos/1/trigger"),
        ("GET", "/pipelines"),
        ("GET", "/pipelines/x"),
        ("GET", "/pipelines/x/logs"),
        ("POST", "/pipelines/x/cancel"),
        ("GET", "/models"),
        ("POST", "/models/iris/predict"),
        ("POST", "/models/iris/rollback"),
        ("DELETE", "/models/iris"),
    ],
)
def test_every_api_route_needs_the_key(gateway: Gateway, method: str, path: str):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"}):
        response = httpx.request(method, f"{gateway.url}{path}", headers=headers, json={})
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert set(response.json()) == {"detail"}


def test_refuses_to_start_without_a_webhook_secret(tmp_path: Path, redis_url: str):
    env = gateway_env(tmp_path, redis_url, GITHUB_WEBHOOK_SECRET="")
    result = run_gateway_briefly(env)
    assert result.returncode == 2
    assert "GITHUB_WEBHOOK_SECRET is empty" in result.stderr


def test_dev_mode_starts_without_a_secret_and_reports_what_is_missing(
    tmp_path: Path, redis_url: str, run_dir: Path
):
    mlflow = f"127.0.0.1:{free_port()}"
    env = gateway_env(
        tmp_path,
        new_redis_db(redis_url),
        GITHUB_WEBHOOK_SECRET="",
        MLOPS_DEV_MODE="true",
        MLFLOW_TRACKING_URI=f"http://mlflow-user:mlflow-pass@{mlflow}",
    )
    gw = launch_gateway(run_dir, f"gateway-dev-{time.monotonic_ns()}", env)
    try:
        response = httpx.get(f"{gw.url}/ready", timeout=10)
        assert response.status_code == 503
        body = response.json()
        assert body["detail"] == "not ready: mlflow, inference, workers"
        assert body["checks"] == {
            "redis": "ok",
            "database": "ok",
            # Named with its address, never with the credentials the address carries.
            "mlflow": f"unreachable at http://{mlflow}",
            "inference": "no live inference replica",
            "workers": "no live pipeline worker",
        }
        # Dev mode without a secret accepts unsigned deliveries.
        ping = httpx.post(
            f"{gw.url}/webhook/github", headers={"X-GitHub-Event": "ping"}, json={"zen": "hi"}
        )
        assert ping.status_code == 200
    finally:
        gw.process.stop()


def test_openapi_documents_every_route_with_examples(gateway: Gateway):
    doc = httpx.get(f"{gateway.url}/openapi.json").json()
    paths = doc["paths"]
    expected = {
        "/health": {"get"},
        "/ready": {"get"},
        "/webhook/github": {"post"},
        "/repos": {"get", "post"},
        "/repos/{repository_id}": {"get", "delete"},
        "/repos/{repository_id}/trigger": {"post"},
        "/pipelines": {"get"},
        "/pipelines/{pipeline_id}": {"get"},
        "/pipelines/{pipeline_id}/logs": {"get"},
        "/pipelines/{pipeline_id}/cancel": {"post"},
        "/models": {"get"},
        "/models/{name}/predict": {"post"},
        "/models/{name}/rollback": {"post"},
        "/models/{name}": {"delete"},
    }
    for path, methods in expected.items():
        assert set(paths[path]) == methods, path
        for method in methods:
            operation = paths[path][method]
            assert operation.get("summary") and operation.get("description"), (path, method)
    schemas = doc["components"]["schemas"]
    for name in ("RepositoryCreate", "RollbackRequest"):
        assert schemas[name].get("examples"), name
    predict_body = paths["/models/{name}/predict"]["post"]["requestBody"]
    assert predict_body["content"]["application/json"]["schema"]["examples"]
    assert "MLOPS_API_KEY" in doc["components"]["securitySchemes"]
    assert "security" not in paths["/webhook/github"]["post"]
    assert paths["/models"]["get"]["security"]
