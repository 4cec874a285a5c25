"""deploy/kubernetes/: parsed and cross-checked against the settings and the services' CLIs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks.processes import REPO_ROOT
from mlops_core import worker_heartbeat
from pipeline_worker.probe import TIMEOUT_S as PROBE_TIMEOUT_S
from pipeline_worker.sandbox.kubernetes import COMPONENT_LABEL, NETWORK_LABEL
from tests.deploy.manifests import (
    DEFAULTS,
    REPLICA_SECRET_NAMES,
    SANDBOX_SETTINGS,
    SECRET_NAMES,
    SETTING_NAMES,
    inference_args,
    python_module,
    sandbox_job_manifest,
    worker_probe,
)

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


def test_kustomization_applies_every_manifest_but_the_examples(
    kustomization: dict[str, Any],
) -> None:
    on_disk = {p.name for p in FOLDER.glob("*.yaml")} - {"kustomization.yaml"}
    examples = {p.name for p in FOLDER.glob("*.example.yaml")}
    assert examples == {"secret.example.yaml", "sandbox-internet.example.yaml"}
    assert set(kustomization["resources"]) == on_disk - examples


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
    # Not `/ready`: a dependency that is away (MLflow, Redis) must not pull every gateway out
    # of the Service, failing predictions that do not need it and refusing pushes.
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/health", "port": port}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/health", "port": port}
    service = objects["Service", "mlops-gateway"]["spec"]
    template = objects["Deployment", "mlops-gateway"]["spec"]["template"]
    assert service["selector"].items() <= template["metadata"]["labels"].items()
    assert service["ports"][0]["targetPort"] == "http"


PROBE_HANDLERS = {"httpGet", "grpc", "exec", "tcpSocket"}


def probe_handler(probe: dict[str, Any]) -> str:
    (handler,) = set(probe) & PROBE_HANDLERS
    return handler


def test_every_deployment_has_liveness_and_readiness_probes(objects: dict) -> None:
    deployments = [name for kind, name in objects if kind == "Deployment"]
    assert deployments
    for name in deployments:
        spec = container(objects, name)
        for kind in ("livenessProbe", "readinessProbe"):
            assert kind in spec, (name, kind)
            probe = spec[kind]
            handler = probe_handler(probe)
            if handler == "exec":
                worker_probe(probe["exec"]["command"])
                # A Python process per probe: give it the time to start and ask Redis.
                assert probe["timeoutSeconds"] >= 2 * PROBE_TIMEOUT_S, (name, kind)
            elif handler == "httpGet":
                assert probe["httpGet"]["port"] in ports(objects, name).values(), (name, kind)


def test_workers_are_probed_by_their_heartbeat(objects: dict) -> None:
    worker = container(objects, "mlops-worker")
    startup, liveness, readiness = (
        worker[kind]["exec"]["command"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    )
    # Readiness fails while Redis is away; liveness only when the heartbeat is missing, so a
    # Redis outage never restarts every worker and ends their running pipelines.
    assert not worker_probe(readiness).liveness
    assert worker_probe(liveness).liveness and worker_probe(startup).liveness
    # One missed beat (a busy event loop) is no reason to restart: the liveness window spans
    # more than the heartbeat's lifetime.
    probe = worker["livenessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] > worker_heartbeat.TTL_S * 2
    start = worker["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 120


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
    # One key seals repository tokens (gateway) and opens them (worker): a pod's own key
    # file would be lost with the pod.
    for name in ("mlops-gateway", "mlops-worker"):
        assert "MLOPS_SECRET_KEY" in env_names(objects, name), name
    assert "MLOPS_SECRET_KEY" not in env_names(objects, "mlops-inference")
    assert SECRET_NAMES & env_names(objects, "mlops-inference") == REPLICA_SECRET_NAMES
    assert secret_keys <= SETTING_NAMES
    url = load(FOLDER / "secret.example.yaml")[0]["stringData"]["DATABASE_URL"]
    assert url.startswith("postgresql+psycopg://")


def secret_ref(objects: dict, deployment: str, name: str) -> dict[str, Any]:
    (entry,) = [e for e in container(objects, deployment)["env"] if e["name"] == name]
    ref: dict[str, Any] = entry["valueFrom"]["secretKeyRef"]
    return ref


def test_replicas_check_the_gateways_api_key(objects: dict) -> None:
    # Native gRPC clients bypass the gateway: a replica without the key would serve them
    # unauthenticated. Both read it from the same Secret entry.
    for name in REPLICA_SECRET_NAMES:
        assert secret_ref(objects, "mlops-inference", name) == secret_ref(
            objects, "mlops-gateway", name
        )


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_renders_it() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(FOLDER)], capture_output=True, text=True, timeout=60
    )
    assert rendered.returncode == 0, rendered.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(rendered.stdout) if doc)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Deployment",
        "Deployment",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "Role",
        "RoleBinding",
        "Service",
        "Service",
        "ServiceAccount",
        "ServiceAccount",
    ]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) == {"matchLabels"}, "only matchLabels selectors are checked here"
    return selector["matchLabels"].items() <= labels.items()


def pod_labels(manifest: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = manifest["spec"]["template"]["metadata"]["labels"]
    return labels


def test_sandbox_pods_get_no_traffic_in_or_out(objects: dict) -> None:
    policy = objects["NetworkPolicy", "mlops-sandbox-isolation"]["spec"]
    assert policy["podSelector"] == {"matchLabels": {COMPONENT_LABEL: "sandbox"}}
    assert selects(policy["podSelector"], pod_labels(sandbox_job_manifest()))
    assert selects(policy["podSelector"], pod_labels(sandbox_job_manifest(network=True)))
    # Both directions are governed and no rule allows anything: deny all.
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    assert not policy.get("ingress") and not policy.get("egress")
    for kind, name in objects:
        if kind == "Deployment":
            labels = objects[kind, name]["spec"]["template"]["metadata"]["labels"]
            assert not selects(policy["podSelector"], labels), name


def test_the_internet_example_opens_only_networked_jobs_and_never_the_cluster() -> None:
    (policy,) = load(FOLDER / "sandbox-internet.example.yaml")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Egress"]
    assert not selects(spec["podSelector"], pod_labels(sandbox_job_manifest()))
    assert selects(spec["podSelector"], pod_labels(sandbox_job_manifest(network=True)))
    assert spec["podSelector"]["matchLabels"][NETWORK_LABEL] == "internet"
    blocks = [
        peer["ipBlock"] for rule in spec["egress"] for peer in rule["to"] if "ipBlock" in peer
    ]
    assert blocks and all(block["cidr"] == "0.0.0.0/0" for block in blocks)
    private = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"}
    assert all(private <= set(block["except"]) for block in blocks)
    dns = [rule for rule in spec["egress"] if not any("ipBlock" in peer for peer in rule["to"])]
    assert all({p["port"] for p in rule["ports"]} == {53} for rule in dns)


def test_sandbox_pods_run_as_an_account_with_no_role(objects: dict) -> None:
    account = objects["ServiceAccount", DEFAULTS.sandbox_k8s_service_account]
    assert account["automountServiceAccountToken"] is False
    spec = sandbox_job_manifest()["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    bound = {
        subject["name"]
        for kind, name in objects
        if kind.endswith("RoleBinding")
        for subject in objects[kind, name]["subjects"]
    }
    assert bound == {"mlops-worker"}


def test_only_the_worker_may_run_sandbox_jobs(objects: dict) -> None:
    worker = objects["Deployment", "mlops-worker"]["spec"]["template"]["spec"]
    assert worker["serviceAccountName"] == "mlops-worker"
    assert ("ServiceAccount", "mlops-worker") in objects
    binding = objects["RoleBinding", "mlops-sandbox-runner"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "mlops-sandbox-runner",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mlops-worker"}]
    for name in ("mlops-gateway", "mlops-inference"):
        spec = objects["Deployment", name]["spec"]["template"]["spec"]
        assert spec.get("serviceAccountName", "default") != "mlops-worker"
    env = {e["name"]: e.get("value") for e in container(objects, "mlops-worker")["env"]}
    assert env["MLOPS_SANDBOX"] == "kubernetes"


def test_the_worker_and_the_jobs_share_the_work_claim(objects: dict) -> None:
    claim = objects["PersistentVolumeClaim", DEFAULTS.sandbox_k8s_work_claim]["spec"]
    assert claim["accessModes"] == ["ReadWriteMany"]
    worker = objects["Deployment", "mlops-worker"]["spec"]["template"]["spec"]
    volume = next(v["name"] for v in worker["volumes"] if "persistentVolumeClaim" in v)
    assert [
        v["persistentVolumeClaim"]["claimName"]
        for v in worker["volumes"]
        if "persistentVolumeClaim" in v
    ] == [DEFAULTS.sandbox_k8s_work_claim]
    (mount,) = [
        m for m in container(objects, "mlops-worker")["volumeMounts"] if m["name"] == volume
    ]
    data_dir = objects["ConfigMap", "mlops-settings"]["data"]["MLOPS_DATA_DIR"]
    assert mount["mountPath"] == f"{data_dir}/pipelines"
    assert "subPath" not in mount
    # The sample Job is rendered under those same settings: its folder of the same claim.
    assert str(SANDBOX_SETTINGS.data_dir) == data_dir
    job = sandbox_job_manifest()["spec"]["template"]["spec"]
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in job["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == [DEFAULTS.sandbox_k8s_work_claim]
