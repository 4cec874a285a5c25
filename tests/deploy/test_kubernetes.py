"""deploy/kubernetes/: parsed and cross-checked against the settings and the services' CLIs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import (
    DEFAULTS,
    SECRET_NAMES,
    SETTING_NAMES,
    inference_args,
    python_module,
)
from tests.support.processes import REPO_ROOT

FOLDER = REPO_ROOT / "deploy" / "kubernetes"


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    return load(FOLDER / "kustomization.yaml")[0]


@pytest.fixture(scope="module")
def objects(kustomization: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    docs = [doc for name in kustomization["resources"] for doc in load(FOLDER / name)]
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


def container(objects: dict, deployment: str) -> dict[str, Any]:
    (only,) = objects["Deployment", deployment]["spec"]["template"]["spec"]["containers"]
    return only


def env_names(objects: dict, deployment: str) -> set[str]:
    return {entry["name"] for entry in container(objects, deployment).get("env", [])}


def ports(objects: dict, deployment: str) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container(objects, deployment)["ports"]}


def test_kustomization_applies_every_manifest_but_the_secret_example(
    kustomization: dict[str, Any],
) -> None:
    on_disk = {p.name for p in FOLDER.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk - {"secret.example.yaml"}


def test_deployments_run_the_services_as_non_root(objects: dict) -> None:
    deployments = {name for kind, name in objects if kind == "Deployment"}
    assert deployments == {"mlops-gateway", "mlops-worker", "mlops-inference"}
    modules = {python_module(container(objects, name)["command"]) for name in deployments}
    assert modules == {"gateway", "pipeline_worker", "inference"}
    for name in deployments:
        spec = objects["Deployment", name]["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        assert container(objects, name)["image"] == "mlops-platform"


def test_the_fleet_is_ready_by_grpc_health_behind_a_headless_service(objects: dict) -> None:
    args = inference_args(container(objects, "mlops-inference")["command"])
    assert args.model_source == "mlflow"
    assert ports(objects, "mlops-inference") == {"grpc": args.grpc_port, "http": args.http_port}
    probe = container(objects, "mlops-inference")["readinessProbe"]
    assert probe["grpc"]["port"] == args.grpc_port
    assert container(objects, "mlops-inference")["livenessProbe"]["httpGet"] == {
        "path": "/health",
        "port": args.http_port,
    }
    service = objects["Service", "mlops-inference"]["spec"]
    assert service["clusterIP"] == "None"
    template = objects["Deployment", "mlops-inference"]["spec"]["template"]
    assert service["selector"].items() <= template["metadata"]["labels"].items()
    assert {p["name"]: p["port"] for p in service["ports"]}["grpc"] == args.grpc_port
    fleet = objects["ConfigMap", "mlops-settings"]["data"]["MLOPS_FLEET_ADDRESS"]
    assert fleet == f"dns:///mlops-inference:{args.grpc_port}"


def test_the_gateway_is_probed_and_exposed_on_its_port(objects: dict) -> None:
    gateway = container(objects, "mlops-gateway")
    port = int(next(e["value"] for e in gateway["env"] if e["name"] == "MLOPS_GATEWAY_PORT"))
    assert port == DEFAULTS.gateway_port == ports(objects, "mlops-gateway")["http"]
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/ready", "port": port}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/health", "port": port}
    service = objects["Service", "mlops-gateway"]["spec"]
    template = objects["Deployment", "mlops-gateway"]["spec"]["template"]
    assert service["selector"].items() <= template["metadata"]["labels"].items()
    assert service["ports"][0]["targetPort"] == "http"


def test_settings_come_from_the_config_map_and_the_secret(objects: dict) -> None:
    config = objects["ConfigMap", "mlops-settings"]["data"]
    assert set(config) <= SETTING_NAMES
    assert not set(config) & (SECRET_NAMES | {"DATABASE_URL", "REDIS_URL"})
    secret_keys = set(load(FOLDER / "secret.example.yaml")[0]["stringData"])
    for name in ("mlops-gateway", "mlops-worker", "mlops-inference"):
        spec = container(objects, name)
        assert [ref["configMapRef"]["name"] for ref in spec["envFrom"]] == ["mlops-settings"]
        assert env_names(objects, name) <= SETTING_NAMES
        for entry in spec["env"]:
            if ref := entry.get("valueFrom", {}).get("secretKeyRef"):
                assert ref["name"] == "mlops-secrets"
                assert ref["key"] == entry["name"] and ref["key"] in secret_keys
    assert {"DATABASE_URL", "REDIS_URL"} <= env_names(objects, "mlops-worker")
    assert "REDIS_URL" in env_names(objects, "mlops-inference")
    assert env_names(objects, "mlops-gateway") >= SECRET_NAMES
    assert not SECRET_NAMES & env_names(objects, "mlops-worker")
    assert not SECRET_NAMES & env_names(objects, "mlops-inference")
    assert secret_keys <= SETTING_NAMES
    url = load(FOLDER / "secret.example.yaml")[0]["stringData"]["DATABASE_URL"]
    assert url.startswith("postgresql+psycopg://")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_renders_it() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(FOLDER)], capture_output=True, text=True, timeout=60
    )
    assert rendered.returncode == 0, rendered.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(rendered.stdout) if doc)
    assert kinds == ["ConfigMap", "Deployment", "Deployment", "Deployment", "Service", "Service"]
