"""The Kubernetes sandbox: each boxed process runs as a Job of its own in the worker's cluster.

The Job's pod has no service-account token, no secret, no service links, a read-only root
filesystem, no capabilities and (by deploy/kubernetes/sandbox.yaml's NetworkPolicy) no
network; its only writable places are its pipeline's folder of the shared work claim and a
memory-backed /tmp. The worker talks to the API server with its own service account, which
may create and delete Jobs and read pods and their logs, nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import socket
import ssl
from collections.abc import Awaitable, Generator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import httpx

from mlops_core.settings import Settings
from pipeline_worker.cancellation import CancelCheck
from pipeline_worker.sandbox import (
    BOX_WORKDIR,
    BoxJob,
    BoxOutcome,
    LineSink,
    SandboxUnavailable,
)

logger = logging.getLogger(__name__)

API_URL = "https://kubernetes.default.svc"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
COMPONENT_LABEL = "app.kubernetes.io/component"
COMPONENT = "sandbox"
NETWORK_LABEL = "mlops-platform/sandbox-network"
"""Set to `internet` on Jobs whose BoxJob allows network; deploy/kubernetes/
sandbox-internet.example.yaml opens egress only to pods that carry it."""
CONTAINER = "box"
BOX_UID = 10001
"""The image's `mlops` user (Dockerfile)."""

TTL_AFTER_FINISHED_S = 600
"""The runner deletes its Job itself; this only clears Jobs of a worker that died."""
DEADLINE_MARGIN_S = 60
"""activeDeadlineSeconds is the wall time plus this, so the runner's own timer (which knows to
report a timeout) fires first and the cluster's deadline is the backstop for a dead worker."""
GRACE_PERIOD_S = 5
EPHEMERAL_STORAGE_BYTES = 256 * 1024 * 1024
"""With a read-only root and /tmp in memory, only the container's own logs use node disk."""
REMOVE_TIMEOUT_S = GRACE_PERIOD_S + 60
MAX_LINE_BYTES = 64 * 1024
FATAL_WAITING = {
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
}
"""Waiting reasons of a container that will not start without someone changing something."""

_T = TypeVar("_T")


def render_job(job: BoxJob, settings: Settings, *, image: str) -> dict[str, Any]:
    """The batch/v1 Job that runs `job` in its own pod (`image`: the sandbox's image)."""
    workroot = settings.data_dir / "pipelines"
    labels = {key: value for key, value in job.labels.items() if key != NETWORK_LABEL}
    labels[COMPONENT_LABEL] = COMPONENT
    if job.network:
        labels[NETWORK_LABEL] = "internet"
    # NOTE: the root filesystem is read-only, so HOME (Jupyter's runtime files, caches) points
    # at the private /tmp unless the job says otherwise.
    env = {"HOME": "/tmp", **job.env}
    limits = job.limits
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"generateName": _generate_name(job.name), "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": math.ceil(limits.wall_time_s) + DEADLINE_MARGIN_S,
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": settings.sandbox_k8s_service_account,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": GRACE_PERIOD_S,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": BOX_UID,
                        "runAsGroup": BOX_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": CONTAINER,
                            "image": image,
                            # NOTE: `args`, not `command`, keeps the image's entrypoint (tini)
                            # as PID 1, which reaps what the kernel leaves behind. prlimit
                            # bounds file size as the local box does; the cgroup below bounds
                            # memory. (RLIMIT_NPROC is per user on the whole node, so it is
                            # left to the kubelet's pod PID limit.)
                            "args": [
                                "prlimit",
                                f"--fsize={limits.file_size_bytes}",
                                "--",
                                "python",
                                "-m",
                                job.module,
                                *job.args,
                            ],
                            "workingDir": str(BOX_WORKDIR),
                            "env": [{"name": name, "value": env[name]} for name in sorted(env)],
                            "resources": {
                                # The memory-backed /tmp counts against the memory limit.
                                "limits": {
                                    "memory": str(limits.memory_bytes + limits.tmp_bytes),
                                    "ephemeral-storage": str(EPHEMERAL_STORAGE_BYTES),
                                }
                            },
                            "securityContext": {
                                "runAsNonRoot": True,
                                "privileged": False,
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {
                                    "name": "work",
                                    "mountPath": str(BOX_WORKDIR),
                                    "subPath": _subpath(job.workdir, workroot),
                                },
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "work",
                            "persistentVolumeClaim": {"claimName": settings.sandbox_k8s_work_claim},
                        },
                        {
                            "name": "tmp",
                            "emptyDir": {"medium": "Memory", "sizeLimit": str(limits.tmp_bytes)},
                        },
                    ],
                },
            },
        },
    }


def _generate_name(name: str) -> str:
    # The API server appends 5 random characters, so a retried pipeline never collides with
    # a Job of its earlier attempt still being removed; names are DNS labels of 63 at most.
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return f"mlops-box-{slug}"[:52].rstrip("-") + "-"


def _subpath(workdir: Path, workroot: Path) -> str:
    """The job's folder relative to the shared claim, which the worker mounts at `workroot`."""
    try:
        relative = workdir.relative_to(workroot)
    except ValueError:
        raise ValueError(
            f"the work directory {workdir} is not under {workroot}, the worker's mount of the"
            " shared work claim: a Job could not see it"
        ) from None
    if not relative.parts or ".." in relative.parts:
        raise ValueError(f"the work directory {workdir} must be a folder inside {workroot}")
    return relative.as_posix()


class KubernetesSandbox:
    """Runs each BoxJob as a Kubernetes Job through the in-cluster API server."""

    name = "kubernetes"
    poll_interval_s = 1.0

    def __init__(
        self,
        settings: Settings,
        *,
        api_url: str = API_URL,
        credentials: Path = SERVICE_ACCOUNT_DIR,
    ) -> None:
        self.settings = settings
        self.api_url = api_url
        self.credentials = credentials
        self._reason: str | None = None
        self._checked = False
        self._image: str | None = settings.sandbox_k8s_image or None

    def unavailable_reason(self) -> str | None:
        if not self._checked:
            self._reason = self._find_unavailable_reason()
            self._checked = True
        return self._reason

    def _find_unavailable_reason(self) -> str | None:
        token = self.credentials / "token"
        if not token.is_file():
            return (
                f"MLOPS_SANDBOX=kubernetes runs pushed code as Kubernetes Jobs, but there is no"
                f" service-account token at {token}: the worker is not running in a pod with"
                " its ServiceAccount (deploy/kubernetes/worker.yaml). Outside a cluster set"
                " MLOPS_SANDBOX=local."
            )
        if self.api_url.startswith("https:") and not (self.credentials / "ca.crt").is_file():
            return f"no cluster CA certificate at {self.credentials / 'ca.crt'} beside the token"
        if (
            not self.settings.sandbox_k8s_namespace
            and not (self.credentials / "namespace").is_file()
        ):
            return "set MLOPS_SANDBOX_K8S_NAMESPACE: the worker's own namespace is unknown"
        return None

    def inside(self, workdir: Path) -> PurePosixPath:
        return BOX_WORKDIR

    def give(self, workdir: Path) -> None:
        """The pod's user is fixed by the Job's security context and the claim's group; the
        worker changes no ownership here (as before warm boxes)."""

    @property
    def namespace(self) -> str:
        return (
            self.settings.sandbox_k8s_namespace
            or (self.credentials / "namespace").read_text().strip()
        )

    async def run(self, job: BoxJob, on_line: LineSink, cancelled: CancelCheck) -> BoxOutcome:
        if reason := self.unavailable_reason():
            raise SandboxUnavailable(reason)
        deadline = asyncio.get_running_loop().time() + job.limits.wall_time_s
        async with self._connect() as api:
            cluster = _Cluster(api, self.namespace, self.poll_interval_s)
            if self._image is None:
                self._image = await cluster.own_image()
            try:
                manifest = render_job(job, self.settings, image=self._image)
            except ValueError as error:
                raise SandboxUnavailable(str(error)) from None
            created = await cluster.create_job(manifest)
            name = created["metadata"]["name"]
            selector = ",".join(
                f"{key}={value}"
                for key, value in created["spec"]["selector"]["matchLabels"].items()
            )
            logger.info("sandbox job %s started for %s", name, job.name)
            follow = _Follow(cluster, selector, on_line, cancelled, deadline, self.poll_interval_s)
            try:
                return await follow.run(job)
            finally:
                await _finish_despite_cancel(cluster.remove_job(name, selector))

    def _connect(self) -> httpx.AsyncClient:
        verify: ssl.SSLContext | bool = True
        if self.api_url.startswith("https:"):
            verify = ssl.create_default_context(cafile=str(self.credentials / "ca.crt"))
        return httpx.AsyncClient(
            base_url=self.api_url,
            auth=_TokenFile(self.credentials / "token"),
            verify=verify,
            timeout=httpx.Timeout(30.0),
        )


async def _finish_despite_cancel(work: Awaitable[_T]) -> _T:
    """Await `work` to its end even if the caller is cancelled meanwhile (then re-raise)."""
    task = asyncio.ensure_future(work)
    interrupted = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            interrupted = True
    if interrupted:
        raise asyncio.CancelledError
    return result


class _TokenFile(httpx.Auth):
    # The kubelet rotates projected service-account tokens, so the file is read per request.
    def __init__(self, path: Path) -> None:
        self.path = path

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.path.read_text().strip()}"
        yield request


class _Cluster:
    """The handful of API calls the runner makes (deploy/kubernetes/sandbox.yaml's Role)."""

    def __init__(self, api: httpx.AsyncClient, namespace: str, poll_interval_s: float) -> None:
        self.api = api
        self.poll_interval_s = poll_interval_s
        self.pods = f"/api/v1/namespaces/{namespace}/pods"
        self.jobs = f"/apis/batch/v1/namespaces/{namespace}/jobs"

    async def own_image(self) -> str:
        response = await self._call("GET", f"{self.pods}/{socket.gethostname()}")
        if response.status_code != 200:
            raise _refused(response, "read the worker pod's image (or set MLOPS_SANDBOX_K8S_IMAGE)")
        image: str = response.json()["spec"]["containers"][0]["image"]
        return image

    async def create_job(self, manifest: dict[str, Any]) -> dict[str, Any]:
        response = await self._call("POST", self.jobs, json=manifest)
        if response.status_code != 201:
            raise _refused(response, "create the sandbox Job")
        created: dict[str, Any] = response.json()
        return created

    async def pod(self, selector: str) -> dict[str, Any] | None:
        """The Job's pod (backoffLimit 0 makes at most one), None while it has none."""
        response = await self._call("GET", self.pods, params={"labelSelector": selector})
        if response.status_code != 200:
            raise _refused(response, "read the sandbox pod")
        items: list[dict[str, Any]] = response.json()["items"]
        return items[0] if items else None

    def log(self, pod: str, since: str | None) -> Any:
        params = {"container": CONTAINER, "follow": "true", "timestamps": "true"}
        if since:
            params["sinceTime"] = since
        return self.api.stream(
            "GET",
            f"{self.pods}/{pod}/log",
            params=params,
            timeout=httpx.Timeout(30.0, read=None),
        )

    async def remove_job(self, name: str, selector: str) -> None:
        """Delete the Job and wait until none of its containers runs any more."""
        try:
            response = await self._call(
                "DELETE", f"{self.jobs}/{name}", params={"propagationPolicy": "Background"}
            )
            if response.status_code not in (200, 202, 404):
                raise _refused(response, f"delete the sandbox Job {name}")
            loop = asyncio.get_running_loop()
            give_up = loop.time() + REMOVE_TIMEOUT_S
            while loop.time() < give_up:
                pod = await self.pod(selector)
                if pod is None or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    return
                await asyncio.sleep(self.poll_interval_s)
            logger.warning(
                "sandbox job %s: its pod still runs %ds after delete", name, REMOVE_TIMEOUT_S
            )
        except (SandboxUnavailable, httpx.HTTPError) as error:
            # NOTE: the Job's activeDeadlineSeconds and TTL still end it; say so and go on.
            logger.error("sandbox job %s could not be removed: %s", name, error)

    async def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.api.request(method, url, **kwargs)
        except httpx.HTTPError as error:
            raise SandboxUnavailable(f"the Kubernetes API is unreachable: {error}") from None


def _refused(response: httpx.Response, action: str) -> SandboxUnavailable:
    try:
        detail = response.json().get("message", "")
    except ValueError:
        detail = response.text[:200]
    return SandboxUnavailable(
        f"the Kubernetes API refused to {action}: {response.status_code} {detail}".strip()
    )


def _box_state(pod: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The box container's state: ('waiting' | 'running' | 'terminated', details)."""
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            for state in ("terminated", "running", "waiting"):
                if state in status.get("state", {}):
                    return state, status["state"][state] or {}
    return "waiting", {}


def _exit_code(terminated: Mapping[str, Any]) -> int:
    # tini (and the shell convention) exit with 128+N when the child died of signal N; the
    # Sandbox contract gives a signal as -N.
    if signal := terminated.get("signal"):
        return -int(signal)
    code = int(terminated.get("exitCode", 0))
    return -(code - 128) if 128 < code < 160 else code


class _Follow:
    """Follows one Job's pod: its log lines into the sink, until it ends, is cancelled or
    runs out of time."""

    def __init__(
        self,
        cluster: _Cluster,
        selector: str,
        on_line: LineSink,
        cancelled: CancelCheck,
        deadline: float,
        poll_interval_s: float,
    ) -> None:
        self.cluster = cluster
        self.selector = selector
        self.on_line = on_line
        self.cancelled = cancelled
        self.deadline = deadline
        self.poll_interval_s = poll_interval_s
        self.last_seen: tuple[str, str] | None = None

    async def run(self, job: BoxJob) -> BoxOutcome:
        loop = asyncio.get_running_loop()
        logs: asyncio.Task[None] | None = None
        drained = started = False
        try:
            while True:
                if await self.cancelled():
                    return BoxOutcome(exit_code=None, cancelled=True)
                if loop.time() >= self.deadline:
                    return BoxOutcome(exit_code=None, timed_out=True)
                if logs is not None and not logs.done():
                    await asyncio.wait({logs}, timeout=self.poll_interval_s)
                    continue
                if logs is not None:
                    logs.result()
                    logs = None
                pod = await self.cluster.pod(self.selector)
                if pod is None and started:
                    await self.on_line("[sandbox] the pod was deleted from outside the platform")
                    return BoxOutcome(exit_code=None)
                if pod is None:
                    await asyncio.sleep(self.poll_interval_s)
                    continue
                started = True
                status = pod.get("status", {})
                state, details = _box_state(pod)
                if state == "terminated" and drained:
                    return await self._ended(details, job)
                if state in ("running", "terminated"):
                    # A stream opened after the container ended reads to its last line.
                    drained = state == "terminated"
                    logs = asyncio.create_task(self._stream(pod["metadata"]["name"]))
                    continue
                if status.get("phase") in ("Failed", "Succeeded"):
                    await self.on_line(
                        "[sandbox] the pod ended before its container started:"
                        f" {status.get('reason', '')} {status.get('message', '')}".rstrip()
                    )
                    return BoxOutcome(exit_code=None)
                if details.get("reason") in FATAL_WAITING:
                    await self.on_line(
                        f"[sandbox] the pod cannot start: {details['reason']}"
                        + (f": {details['message']}" if details.get("message") else "")
                    )
                    return BoxOutcome(exit_code=None)
                await asyncio.sleep(self.poll_interval_s)
        finally:
            if logs is not None and not logs.done():
                logs.cancel()
                await asyncio.gather(logs, return_exceptions=True)

    async def _ended(self, terminated: Mapping[str, Any], job: BoxJob) -> BoxOutcome:
        if terminated.get("reason") == "OOMKilled":
            mib = (job.limits.memory_bytes + job.limits.tmp_bytes) // (1024 * 1024)
            await self.on_line(f"[sandbox] killed: memory limit reached ({mib} MiB with /tmp)")
        return BoxOutcome(exit_code=_exit_code(terminated))

    async def _stream(self, pod: str) -> None:
        since = f"{self.last_seen[0]}Z" if self.last_seen else None
        pending = b""
        cut = False
        try:
            async with self.cluster.log(pod, since) as response:
                if response.status_code != 200:
                    # e.g. 400 while the container is still being created: poll again.
                    return
                async for chunk in response.aiter_bytes():
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if not cut:
                            await self._emit(line)
                        cut = False
                    if len(pending) > MAX_LINE_BYTES and not cut:
                        await self._emit(pending[:MAX_LINE_BYTES] + b" [line cut]")
                        pending, cut = b"", True
                    elif cut:
                        pending = b""
        except httpx.TransportError:
            # A dropped stream is resumed from the last line seen on the next poll.
            return
        if pending and not cut:
            await self._emit(pending)

    async def _emit(self, raw: bytes) -> None:
        stamp, _, text = raw.decode("utf-8", "replace").rstrip("\r").partition(" ")
        seen = _timestamp_key(stamp)
        if seen is None:
            await self.on_line(raw.decode("utf-8", "replace").rstrip("\r"))
            return
        # NOTE: a resumed stream starts at the whole second of the last line seen (sinceTime
        # has second precision): the lines it repeats are skipped by their full timestamp.
        if self.last_seen is not None and seen <= self.last_seen:
            return
        self.last_seen = seen
        await self.on_line(text)


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z$")


def _timestamp_key(stamp: str) -> tuple[str, str] | None:
    """An RFC 3339 UTC timestamp of the log API as (seconds, nanoseconds), both sortable."""
    match = _STAMP.match(stamp)
    if match is None:
        return None
    return match.group(1), (match.group(2) or "").ljust(9, "0")
