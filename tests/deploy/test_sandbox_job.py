"""The Kubernetes sandbox: the Job it renders, and its runner against a fake API server.

There is no cluster here, so the API server is the one boundary faked: a real HTTP server on
loopback that keeps Jobs and pods in memory, plays each pod's container from a script and
records every call, so the worker's Role can be checked against what the runner really does.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from benchmarks.processes import REPO_ROOT
from mlops_core.settings import Settings
from pipeline_worker.sandbox import BOX_WORKDIR, BoxJob, Limits, SandboxUnavailable
from pipeline_worker.sandbox.kubernetes import (
    COMPONENT_LABEL,
    DEADLINE_MARGIN_S,
    NETWORK_LABEL,
    KubernetesSandbox,
    render_job,
)
from tests.deploy.manifests import (
    SANDBOX_IMAGE,
    SANDBOX_SETTINGS,
    sandbox_box_job,
    sandbox_job_manifest,
)

MIB = 1024 * 1024


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return spec


def box(manifest: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod_spec(manifest)["containers"]
    return only


def keys_anywhere(tree: Any) -> set[str]:
    if isinstance(tree, dict):
        return set(tree) | {key for value in tree.values() for key in keys_anywhere(value)}
    if isinstance(tree, list):
        return {key for item in tree for key in keys_anywhere(item)}
    return set()


# --- the rendered Job ------------------------------------------------------------------------


def test_the_pod_gets_no_token_no_secret_and_only_the_jobs_environment() -> None:
    manifest = sandbox_job_manifest()
    spec = pod_spec(manifest)
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["serviceAccountName"] == SANDBOX_SETTINGS.sandbox_k8s_service_account
    forbidden = {"envFrom", "valueFrom", "secretKeyRef", "secretRef", "secret", "configMap"}
    forbidden |= {"projected", "serviceAccountToken", "hostPath", "hostNetwork", "hostPID"}
    forbidden |= {"hostIPC", "imagePullSecrets"}
    assert not keys_anywhere(manifest) & forbidden
    env = {entry["name"]: entry["value"] for entry in box(manifest)["env"]}
    assert env == {"HOME": "/tmp", **sandbox_box_job().env}


def test_no_secret_of_the_workers_settings_reaches_the_job() -> None:
    secrets = {
        "github_webhook_secret": "whsec-4d1f9a",
        "api_key": "apikey-8c2e77",
        "redis_url": "redis://:redispw-51aa@redis:6379/0",
        "database_url": "postgresql+psycopg://mlops:dbpw-93be@postgres/mlops",
    }
    settings = SANDBOX_SETTINGS.model_copy(update=secrets)
    rendered = json.dumps(render_job(sandbox_box_job(), settings, image=SANDBOX_IMAGE))
    for needle in ("whsec-4d1f9a", "apikey-8c2e77", "redispw-51aa", "dbpw-93be"):
        assert needle not in rendered


def test_the_box_runs_unprivileged_on_a_read_only_root() -> None:
    manifest = sandbox_job_manifest()
    assert pod_spec(manifest)["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    context = box(manifest)["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["privileged"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "--uid 10001" in dockerfile and "USER mlops" in dockerfile


def test_limits_deadline_and_a_single_attempt() -> None:
    job = sandbox_box_job()
    manifest = sandbox_job_manifest()
    limits = box(manifest)["resources"]["limits"]
    assert int(limits["memory"]) == job.limits.memory_bytes + job.limits.tmp_bytes
    assert 0 < int(limits["ephemeral-storage"]) <= 1024 * MIB
    volumes = {v["name"]: v for v in pod_spec(manifest)["volumes"]}
    assert volumes["tmp"]["emptyDir"] == {
        "medium": "Memory",
        "sizeLimit": str(job.limits.tmp_bytes),
    }
    assert {"name": "tmp", "mountPath": "/tmp"} in box(manifest)["volumeMounts"]
    assert manifest["spec"]["backoffLimit"] == 0
    assert pod_spec(manifest)["restartPolicy"] == "Never"
    deadline = manifest["spec"]["activeDeadlineSeconds"]
    assert deadline == math.ceil(job.limits.wall_time_s) + DEADLINE_MARGIN_S
    assert 0 < manifest["spec"]["ttlSecondsAfterFinished"] <= 3600


def test_the_command_is_python_m_module_under_a_file_size_limit() -> None:
    job = sandbox_box_job()
    args = box(sandbox_job_manifest())["args"]
    assert args == [
        "prlimit",
        f"--fsize={job.limits.file_size_bytes}",
        "--",
        "python",
        "-m",
        job.module,
        *job.args,
    ]
    assert "command" not in box(sandbox_job_manifest()), "the image's tini stays PID 1"
    assert box(sandbox_job_manifest())["workingDir"] == str(BOX_WORKDIR)


def test_the_rendered_command_line_runs() -> None:
    # The same prlimit (util-linux) as the image's Debian: the rendered argv is well formed
    # and the file-size limit holds.
    limits = replace(sandbox_box_job().limits, file_size_bytes=4096)
    job = sandbox_box_job(module="this", args=(), limits=limits)
    args = box(render_job(job, SANDBOX_SETTINGS, image=SANDBOX_IMAGE))["args"]
    args[args.index("python")] = sys.executable
    ran = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0 and "Beautiful is better than ugly" in ran.stdout
    limits_seen = subprocess.run(
        [*args[:3], sys.executable, "-c", "import resource; print(resource.getrlimit(1))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert limits_seen.stdout.strip() == "(4096, 4096)"


def test_the_job_sees_only_its_own_pipelines_folder_of_the_claim() -> None:
    manifest = sandbox_job_manifest()
    (work,) = [m for m in box(manifest)["volumeMounts"] if m["name"] == "work"]
    assert work == {"name": "work", "mountPath": str(BOX_WORKDIR), "subPath": "7f3c/work"}
    volumes = {v["name"]: v for v in pod_spec(manifest)["volumes"]}
    assert set(volumes) == {"work", "tmp"}
    assert volumes["work"]["persistentVolumeClaim"] == {
        "claimName": SANDBOX_SETTINGS.sandbox_k8s_work_claim
    }


@pytest.mark.parametrize(
    "workdir",
    [Path("/elsewhere/7f3c"), Path("/data/pipelines"), Path("/data/pipelines/../mlops.db")],
)
def test_a_work_directory_outside_the_claim_is_refused(workdir: Path) -> None:
    with pytest.raises(ValueError, match="work directory"):
        render_job(sandbox_box_job(workdir=workdir), SANDBOX_SETTINGS, image=SANDBOX_IMAGE)


def test_labels_mark_the_pod_as_a_sandbox_and_network_only_when_allowed() -> None:
    closed = sandbox_job_manifest()
    labels = closed["spec"]["template"]["metadata"]["labels"]
    assert labels == {"mlops-platform/pipeline": "7f3c", COMPONENT_LABEL: "sandbox"}
    assert closed["metadata"]["labels"] == labels
    opened = sandbox_job_manifest(network=True)["spec"]["template"]["metadata"]["labels"]
    assert opened[NETWORK_LABEL] == "internet"
    forged = sandbox_box_job(labels={NETWORK_LABEL: "internet", COMPONENT_LABEL: "gateway"})
    forged_labels = render_job(forged, SANDBOX_SETTINGS, image=SANDBOX_IMAGE)["metadata"]["labels"]
    assert forged_labels == {COMPONENT_LABEL: "sandbox"}


@pytest.mark.parametrize("name", ["7f3c-execute", "Pipeline_42/Verify", "x" * 200])
def test_job_names_are_dns_labels_the_api_server_completes(name: str) -> None:
    generated = render_job(sandbox_box_job(name=name), SANDBOX_SETTINGS, image=SANDBOX_IMAGE)[
        "metadata"
    ]["generateName"]
    assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?-", generated)
    assert len(generated) + 5 <= 63


# --- the runner against a fake API server ----------------------------------------------------

TOKEN = "worker-token-3b9d"
NAMESPACE = "mlops-test"
WORKER_IMAGE = "registry.example/mlops-platform:9.9.9"


@dataclass
class Script:
    """What the fake kubelet plays for the next Job's container."""

    lines: list[str] = field(default_factory=list)
    exit_code: int | None = 0
    """None: the container runs (printing a tick every 20 ms) until its Job is deleted."""
    pending_polls: int = 1
    waiting_reason: str | None = None
    drop_after: int | None = None
    """The first log stream ends after this many lines while the container still runs."""
    oom: bool = False


class FakeCluster:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.script = Script()
        self.calls: list[tuple[str, str, dict[str, str]]] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.pods: dict[str, dict[str, Any]] = {}
        self.scripts: dict[str, Script] = {}
        self.polls: dict[str, int] = {}
        self.log_requests: dict[str, int] = {}
        self.refuse_create = False
        self.base = datetime(2030, 1, 1, tzinfo=UTC)

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.created.append(manifest)
        name = manifest["metadata"]["generateName"] + f"{len(self.jobs):05d}"
        uid = f"uid-{len(self.jobs)}"
        created = json.loads(json.dumps(manifest))
        created["metadata"].update(name=name, uid=uid)
        created["spec"]["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        self.jobs[name] = created
        pod = f"{name}-pod"
        labels = {**manifest["spec"]["template"]["metadata"]["labels"]}
        labels["batch.kubernetes.io/controller-uid"] = uid
        self.pods[pod] = {
            "metadata": {"name": pod, "labels": labels},
            "status": {"phase": "Pending", "containerStatuses": [self.status("waiting")]},
        }
        self.scripts[pod] = self.script
        self.polls[pod] = 0
        if self.script.waiting_reason:
            self.set_state(pod, "waiting", {"reason": self.script.waiting_reason})
        return created

    @staticmethod
    def status(state: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"name": "box", "state": {state: details or {"reason": "ContainerCreating"}}}

    def set_state(self, pod: str, state: str, details: dict[str, Any] | None = None) -> None:
        phase = {"waiting": "Pending", "running": "Running"}.get(state, "Succeeded")
        if state == "terminated" and details and details.get("exitCode"):
            phase = "Failed"
        self.pods[pod]["status"] = {
            "phase": phase,
            "containerStatuses": [self.status(state, details)],
        }

    def list_pods(self, selector: str) -> list[dict[str, Any]]:
        wanted = dict(pair.split("=", 1) for pair in selector.split(","))
        found = []
        for name, pod in list(self.pods.items()):
            if not wanted.items() <= pod["metadata"]["labels"].items():
                continue
            if pod.get("removing"):
                del self.pods[name]  # seen once while it stops, then gone
            self.polls[name] += 1
            script = self.scripts[name]
            state = pod["status"]["containerStatuses"][0]["state"]
            pending = "waiting" in state and not script.waiting_reason
            if pending and self.polls[name] > script.pending_polls:
                self.set_state(name, "running", {"startedAt": "2030-01-01T00:00:00Z"})
            found.append(pod)
        return found

    def stamp(self, index: int) -> str:
        moment = self.base + timedelta(milliseconds=100 * index)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"

    def delete(self, name: str) -> bool:
        job = self.jobs.pop(name, None)
        if job is None:
            return False
        self.deleted.append(name)
        uid = job["metadata"]["uid"]
        for pod in self.pods.values():
            if pod["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] == uid:
                pod["removing"] = True
        # Ended pods go at once; a running one is seen once more, stopping, then is gone.
        for name, pod in list(self.pods.items()):
            if pod.get("removing") and pod["status"]["phase"] in ("Succeeded", "Failed"):
                del self.pods[name]
        return True


class Handler(BaseHTTPRequestHandler):
    cluster: FakeCluster

    def log_message(self, *args: Any) -> None:
        pass

    def reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def route(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        cluster = self.cluster
        with cluster.lock:
            cluster.calls.append((method, url.path, query))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self.reply(401, {"kind": "Status", "message": "Unauthorized"})
        pods = f"/api/v1/namespaces/{NAMESPACE}/pods"
        jobs = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
        with cluster.lock:
            if method == "POST" and url.path == jobs:
                if cluster.refuse_create:
                    message = 'jobs.batch is forbidden: User "system:serviceaccount" cannot create'
                    return self.reply(403, {"kind": "Status", "message": message})
                length = int(self.headers["Content-Length"])
                return self.reply(201, cluster.create(json.loads(self.rfile.read(length))))
            if method == "DELETE" and url.path.startswith(f"{jobs}/"):
                found = cluster.delete(url.path.rsplit("/", 1)[1])
                return self.reply(200 if found else 404, {"kind": "Status"})
            if method == "GET" and url.path == pods:
                items = cluster.list_pods(query["labelSelector"])
                return self.reply(200, {"kind": "PodList", "items": items})
            if method == "GET" and url.path == f"{pods}/{socket.gethostname()}":
                containers = [{"name": "worker", "image": WORKER_IMAGE}]
                return self.reply(200, {"kind": "Pod", "spec": {"containers": containers}})
        if method == "GET" and url.path.startswith(pods) and url.path.endswith("/log"):
            return self.stream_log(url.path.split("/")[-2], query)
        self.reply(404, {"kind": "Status", "message": f"no route {method} {url.path}"})

    def stream_log(self, pod: str, query: dict[str, str]) -> None:
        cluster = self.cluster
        assert query == {
            "container": "box",
            "follow": "true",
            "timestamps": "true",
            **({"sinceTime": query["sinceTime"]} if "sinceTime" in query else {}),
        }
        with cluster.lock:
            script = cluster.scripts[pod]
            requests = cluster.log_requests[pod] = cluster.log_requests.get(pod, 0) + 1
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        since = query.get("sinceTime", "")
        lines = list(script.lines)
        if script.drop_after is not None and requests == 1:
            lines = lines[: script.drop_after]
        try:
            for index, line in enumerate(lines):
                # Like the API server: sinceTime has whole seconds, so earlier lines repeat.
                if cluster.stamp(index)[:19] >= since[:19]:
                    self.wfile.write(f"{cluster.stamp(index)} {line}\n".encode())
                    self.wfile.flush()
            if script.drop_after is not None and requests == 1:
                return
            tick = len(lines)
            while script.exit_code is None and pod in cluster.pods:
                self.wfile.write(f"{cluster.stamp(tick)} tick {tick}\n".encode())
                self.wfile.flush()
                tick += 1
                time.sleep(0.02)
            with cluster.lock:
                if script.exit_code is not None and pod in cluster.pods:
                    details: dict[str, Any] = {"exitCode": script.exit_code, "reason": "Completed"}
                    if script.oom:
                        details = {"exitCode": 137, "reason": "OOMKilled"}
                    cluster.set_state(pod, "terminated", details)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:
        self.route("GET")

    def do_POST(self) -> None:
        self.route("POST")

    def do_DELETE(self) -> None:
        self.route("DELETE")


@pytest.fixture
def cluster() -> Iterator[tuple[FakeCluster, str]]:
    fake = FakeCluster()
    handler = type("BoundHandler", (Handler,), {"cluster": fake})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def credentials(tmp_path: Path, token: str = TOKEN) -> Path:
    folder = tmp_path / "serviceaccount"
    folder.mkdir()
    (folder / "token").write_text(token + "\n")
    (folder / "namespace").write_text(NAMESPACE)
    return folder


def sandbox_for(tmp_path: Path, api_url: str, **settings: Any) -> KubernetesSandbox:
    values = {"data_dir": tmp_path / "data", "sandbox": "kubernetes", **settings}
    sandbox = KubernetesSandbox(
        Settings(_env_file=None, redis_url=None, **values),
        api_url=api_url,
        credentials=credentials(tmp_path),
    )
    sandbox.poll_interval_s = 0.05
    return sandbox


def box_job(sandbox: KubernetesSandbox, wall_time_s: float = 30.0) -> BoxJob:
    settings = sandbox.settings
    return BoxJob(
        name="7f3c-execute",
        module="pipeline_worker.sample_box",
        args=(),
        workdir=settings.data_dir / "pipelines" / "7f3c",
        env={"PIPELINE_ID": "7f3c"},
        limits=replace(Limits.from_settings(settings), wall_time_s=wall_time_s),
        labels={"mlops-platform/pipeline": "7f3c"},
    )


class Lines:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.first = asyncio.Event()

    async def __call__(self, line: str) -> None:
        self.seen.append(line)
        self.first.set()


async def never() -> bool:
    return False


def role_permissions() -> set[tuple[str, str, str]]:
    docs = yaml.safe_load_all((REPO_ROOT / "deploy/kubernetes/sandbox.yaml").read_text())
    (role,) = [doc for doc in docs if doc and doc["kind"] == "Role"]
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def permission(method: str, path: str, query: dict[str, str]) -> tuple[str, str, str]:
    """The RBAC (apiGroup, resource, verb) the API server checks for a call."""
    parts = path.strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    rest = parts[parts.index("namespaces") + 2 :]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    verb = {"POST": "create", "DELETE": "delete"}.get(method, "get" if len(rest) > 1 else "list")
    return group, resource, verb


async def test_run_creates_the_job_follows_its_log_and_returns_the_exit_code(
    tmp_path: Path, cluster: tuple[FakeCluster, str]
) -> None:
    fake, url = cluster
    fake.script = Script(lines=["loading data", "accuracy 0.97", "ünïcode ✓"], exit_code=3)
    sandbox = sandbox_for(tmp_path, url)
    assert sandbox.unavailable_reason() is None
    job = box_job(sandbox)
    lines = Lines()
    outcome = await sandbox.run(job, lines, never)
    assert outcome.exit_code == 3 and not outcome.timed_out and not outcome.cancelled
    assert lines.seen == ["loading data", "accuracy 0.97", "ünïcode ✓"]
    # The Job created is exactly the rendered one, in the worker's own image by default.
    assert fake.created == [render_job(job, sandbox.settings, image=WORKER_IMAGE)]
    assert len(fake.deleted) == 1 and not fake.pods and not fake.jobs
    methods = [method for method, _, _ in fake.calls]
    assert methods[:2] == ["GET", "POST"] and methods.count("DELETE") == 1
    assert fake.calls[methods.index("DELETE")][2] == {"propagationPolicy": "Background"}
    last_log = max(i for i, (_, path, _) in enumerate(fake.calls) if path.endswith("/log"))
    assert methods.index("DELETE") > last_log
    # Every call the runner made is allowed by the worker's Role, and the Role allows no more.
    assert {permission(*call) for call in fake.calls} == role_permissions()


async def test_the_image_setting_is_used_without_a_look_up(
    tmp_path: Path, cluster: tuple[FakeCluster, str]
) -> None:
    fake, url = cluster
    sandbox = sandbox_for(tmp_path, url, sandbox_k8s_image=SANDBOX_IMAGE)
    job = box_job(sandbox)
    assert (await sandbox.run(job, Lines(), never)).exit_code == 0
    assert fake.created == [render_job(job, sandbox.settings, image=SANDBOX_IMAGE)]
    # An image from the settings needs no look-up of the worker's own pod.
    assert not any(path.endswith(socket.gethostname()) for _, path, _ in fake.calls)


@pytest.mark.parametrize(("exit_code", "expected"), [(0, 0), (1, 1), (137, -9), (143, -15)])
async def test_exit_codes_of_signals_are_negative(
    tmp_path: Path, cluster: tuple[FakeCluster, str], exit_code: int, expected: int
) -> None:
    fake, url = cluster
    fake.script = Script(exit_code=exit_code)
    sandbox = sandbox_for(tmp_path, url)
    outcome = await sandbox.run(box_job(sandbox), Lines(), never)
    assert outcome.exit_code == expected


async def test_a_cancel_request_deletes_the_running_job(
    tmp_path: Path, cluster: tuple[FakeCluster, str]
) -> None:
    fake, url = cluster
    fake.script = Script(lines=["started"], exit_code=None)
    lines = Lines()

    async def after_three_ticks() -> bool:
        return sum(line.startswith("tick") for line in lines.seen) >= 3

    sandbox = sandbox_for(tmp_path, url)
    outcome = await sandbox.run(box_job(sandbox), lines, after_three_ticks)
    assert outcome.cancelled and outcome.exit_code is None
    assert lines.seen[0] == "started"
    assert len(fake.deleted) == 1 and not fake.jobs and not fake.pods


async def test_the_wall_time_deletes_the_running_job(
    tmp_path: Path, cluster: tuple[FakeCluster, str]
) -> None:
    fake, url = cluster
    fake.script = Script(exit_code=None)
    sandbox = sandbox_for(tmp_path, url)
    started = time.monotonic()
    outcome = await sandbox.run(box_job(sandbox, wall_time_s=0.5), Lines(), never)
    assert outcome.timed_out and not outcome.cancelled
    assert time.monotonic() - started < 5
    assert len(fake.deleted) == 1 and not fake.pods


async def test_a_cancelled_task_still_deletes_the_job(
    tmp_path: Path, cluster: tuple[FakeCluster, str]
) -> None:
    fake, url = cluster
    fake.script = Script(exit_code=None)
    sandbox = sandbox_for(tmp_path, url)
    lines = Lines()
    run = asyncio.create_task(sandbox.run(box_job(sandbox), lines, never))
    await asyncio.wait_for(lines.first.wait(), 10)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert len(fake.deleted) == 1 and not fake.jobs and not fake.pods


async def test_a_dropped_log_stream_resumes_without_repeating_lines(
    tmp_path: Path, cluster: tuple[FakeCluster, str]
) -> None:
    fake, url = cluster
    fake.script = Script(lines=[f"line {i}" for i in range(6)], exit_code=0, drop_after=2)
    sandbox = sandbox_for(tmp_path, url)
    lines = Lines()
    assert (await sandbox.run(box_job(sandbox), lines, never)).exit_code == 0
    assert lines.seen == [f"line {i}" for i in range(6)]
    (pod,) = fake.log_requests
    assert fake.log_requests[pod] >= 2


async def test_a_huge_line_is_cut(tmp_path: Path, cluster: tuple[FakeCluster, str]) -> None:
    fake, url = cluster
    fake.script = Script(lines=["before", "x" * 300_000, "after"])
    sandbox = sandbox_for(tmp_path, url)
    lines = Lines()
    await sandbox.run(box_job(sandbox), lines, never)
    assert lines.seen[0] == "before" and lines.seen[-1] == "after" and len(lines.seen) == 3
    assert lines.seen[1].endswith("[line cut]") and len(lines.seen[1]) < 70_000


async def test_a_pod_that_cannot_start_ends_the_run_and_says_why(
    tmp_path: Path, cluster: tuple[FakeCluster, str]
) -> None:
    fake, url = cluster
    fake.script = Script(waiting_reason="ImagePullBackOff")
    sandbox = sandbox_for(tmp_path, url)
    lines = Lines()
    outcome = await sandbox.run(box_job(sandbox), lines, never)
    assert outcome.exit_code is None and not outcome.timed_out
    assert lines.seen == ["[sandbox] the pod cannot start: ImagePullBackOff"]
    assert len(fake.deleted) == 1


async def test_the_memory_limit_is_named_when_it_kills_the_box(
    tmp_path: Path, cluster: tuple[FakeCluster, str]
) -> None:
    fake, url = cluster
    fake.script = Script(lines=["allocating"], oom=True)
    sandbox = sandbox_for(tmp_path, url)
    lines = Lines()
    outcome = await sandbox.run(box_job(sandbox), lines, never)
    assert outcome.exit_code == -9
    assert lines.seen[-1].startswith("[sandbox] killed: memory limit reached")


async def test_a_refusing_api_server_is_a_clear_error(
    tmp_path: Path, cluster: tuple[FakeCluster, str]
) -> None:
    fake, url = cluster
    fake.refuse_create = True
    sandbox = sandbox_for(tmp_path, url)
    with pytest.raises(
        SandboxUnavailable, match=r"refused to create the sandbox Job: 403 .*forbid"
    ):
        await sandbox.run(box_job(sandbox), Lines(), never)


async def test_an_unreachable_api_server_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sandbox = sandbox_for(tmp_path, f"http://127.0.0.1:{port}", sandbox_k8s_image=SANDBOX_IMAGE)
    with pytest.raises(SandboxUnavailable, match="Kubernetes API is unreachable"):
        await sandbox.run(box_job(sandbox), Lines(), never)


async def test_a_work_directory_off_the_claim_fails_the_run_clearly(
    tmp_path: Path, cluster: tuple[FakeCluster, str]
) -> None:
    fake, url = cluster
    sandbox = sandbox_for(tmp_path, url, sandbox_k8s_image=SANDBOX_IMAGE)
    job = replace(box_job(sandbox), workdir=tmp_path / "elsewhere")
    assert sandbox.inside(box_job(sandbox).workdir) == BOX_WORKDIR
    with pytest.raises(SandboxUnavailable, match=r"not under .*the shared work claim"):
        await sandbox.run(job, Lines(), never)
    assert not fake.created


async def test_outside_a_cluster_it_is_unavailable_and_says_what_to_do(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, redis_url=None, sandbox="kubernetes")
    sandbox = KubernetesSandbox(settings, credentials=tmp_path / "no-such-dir")
    reason = sandbox.unavailable_reason()
    assert reason is not None
    assert "service-account token" in reason and "MLOPS_SANDBOX=local" in reason
    with pytest.raises(SandboxUnavailable, match="service-account token"):
        await sandbox.run(box_job(sandbox), Lines(), never)
