"""Issue 13's command line end to end: the installed `mlops` console script, run as a user runs
it (a subprocess, MLOPS_GATEWAY_URL and MLOPS_API_KEY in its environment), against one real
platform (`python -m launcher`) with an API key, for every command and its exit codes, and
`logs -f` across a restart of the gateway."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.processes import VENV_BIN, free_port
from tests.end_to_end import notebooks
from tests.end_to_end.stack import Stack, inherited_env, stack_env, started_stack
from tests.end_to_end.test_platform_flow import MODEL, ROWS
from tests.gateway.conftest import LocalRepo, make_local_repo

MLOPS = VENV_BIN / "mlops"
API_KEY = "cli-test-api-key"
PIPELINE_TIMEOUT_S = 240
HELD_CANARY = {
    "strategy": "canary",
    "steps": [10, 50],
    "step_interval_s": 600,
    "max_hold_s": 3600,
}
"""A rollout that waits for traffic that never comes: only promote or abort ends it."""
pytestmark = pytest.mark.slow

IRIS_CSV = "sepal_length,sepal_width,petal_length,petal_width\n" + "".join(
    ",".join(str(v) for v in row) + "\n" for row in ROWS
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("cli")
    env = {**stack_env(workdir / "data", replicas=1), "MLOPS_API_KEY": API_KEY}
    with started_stack("cli", workdir, env) as stack:
        yield stack


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> LocalRepo:
    root = tmp_path_factory.mktemp("cli-git")
    return make_local_repo(root, "iris-training", {notebooks.PATH: notebooks.example()})


def cli_env(gateway: str, api_key: str | None = API_KEY) -> dict[str, str]:
    env = {**inherited_env(), "MLOPS_GATEWAY_URL": gateway}
    if api_key is not None:
        env["MLOPS_API_KEY"] = api_key
    return env


def mlops(
    stack: Stack, *args: str, stdin: str | None = None, api_key: str | None = API_KEY
) -> subprocess.CompletedProcess[str]:
    """`mlops ARGS` against the stack, with the API key unless `api_key` says otherwise."""
    return subprocess.run(
        [str(MLOPS), *args],
        env=cli_env(stack.gateway, api_key),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=PIPELINE_TIMEOUT_S,
    )


def ok_json(stack: Stack, *args: str, stdin: str | None = None) -> Any:
    done = mlops(stack, *args, "-o", "json", stdin=stdin)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return json.loads(done.stdout)


def fails(stack: Stack, *args: str, api_key: str | None = API_KEY) -> str:
    """The stderr of `mlops ARGS`, which must exit 1 without a traceback."""
    done = mlops(stack, *args, api_key=api_key)
    assert done.returncode == 1, (args, done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr


def api(stack: Stack) -> httpx.Client:
    return httpx.Client(
        base_url=stack.gateway, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
    )


def wait_for(what: str, condition: Any, timeout_s: float = PIPELINE_TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


class Follower:
    """`mlops logs -f ID -o json` running, its stdout lines collected as they come."""

    def __init__(self, stack: Stack, pipeline_id: str) -> None:
        self.process = subprocess.Popen(
            [str(MLOPS), "logs", "-f", pipeline_id, "-o", "json"],
            env=cli_env(stack.gateway),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def wait(self) -> tuple[int, list[dict[str, Any]], str]:
        """Exit code, the JSON entries printed, stderr."""
        try:
            code = self.process.wait(timeout=PIPELINE_TIMEOUT_S)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        self._reader.join(timeout=10)
        assert self.process.stderr is not None
        return code, [json.loads(line) for line in self.lines], self.process.stderr.read()


def follow(stack: Stack, pipeline_id: str) -> tuple[int, list[dict[str, Any]], str]:
    return Follower(stack, pipeline_id).wait()


def supervisorctl(stack: Stack, *args: str) -> None:
    """The stack's `supervisorctl`, as the launcher's banner documents it."""
    conf = Path(stack.env["MLOPS_DATA_DIR"]) / "supervisord.conf"
    done = subprocess.run(
        [str(VENV_BIN / "supervisorctl"), "-c", str(conf), *args],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_unreachable_gateway_is_named() -> None:
    address = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [str(MLOPS), "models", "--gateway", address],
        env=cli_env("http://unused.invalid"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: cannot reach the gateway at {address}: "), done.stderr


def test_status_and_the_api_key(stack: Stack) -> None:
    ready = ok_json(stack, "status")
    assert ready["status"] == "ready" and ready["checks"]["redis"] == "ok", ready
    table = mlops(stack, "status")
    assert table.returncode == 0 and "workers" in table.stdout, table.stdout

    # Without the key, or with a wrong one, the gateway's 401 message; the key is never shown.
    assert "missing bearer token" in fails(stack, "repos", "list", api_key=None)
    wrong = fails(stack, "repos", "list", api_key="not-the-key")
    assert "invalid API key" in wrong and "not-the-key" not in wrong
    assert API_KEY not in mlops(stack, "status", "--help").stdout


def test_register_trigger_and_follow_across_a_gateway_restart(
    stack: Stack, repo: LocalRepo
) -> None:
    repo_id = ok_json(stack, "repos", "add", repo.url, "--notebook", notebooks.PATH)["id"]
    assert [r["id"] for r in ok_json(stack, "repos", "list")] == [repo_id]
    assert "iris-training" in mlops(stack, "repos", "list").stdout
    # A usage error is click's exit code 2.
    assert mlops(stack, "repos", "add", repo.url).returncode == 2

    pipeline_id = ok_json(stack, "trigger", str(repo_id))["id"]
    follower = Follower(stack, pipeline_id)
    wait_for("the first log line", lambda: follower.lines, 60)
    supervisorctl(stack, "stop", "gateway")
    # The stream was cut before its end: only a reconnect can bring the rest.
    before_cut = list(follower.lines)
    assert not any('"end"' in line for line in before_cut), before_cut
    supervisorctl(stack, "start", "gateway")
    code, entries, stderr = follower.wait()

    assert code == 0, (entries[-5:], stderr)
    assert entries[-1] == {"end": "succeeded"}, entries[-5:]
    seqs = [e["seq"] for e in entries[:-1]]
    with api(stack) as client:
        served = client.get(f"/pipelines/{pipeline_id}/logs").json()["lines"]
    # Each line exactly once, none missing, in order, though the stream was cut.
    assert seqs == [line["seq"] for line in served] == list(range(1, len(served) + 1))
    assert [e["line"] for e in entries[:-1]] == [line["line"] for line in served]
    assert len(entries) > len(before_cut) + 1, "no line came after the reconnect"

    plain = mlops(stack, "logs", pipeline_id)
    assert plain.returncode == 0 and plain.stdout.splitlines() == [s["line"] for s in served]
    listed = ok_json(stack, "pipelines", "--repo", str(repo_id), "--status", "succeeded")
    assert [p["id"] for p in listed["items"]] == [pipeline_id]
    assert ok_json(stack, "pipelines", "--status", "failed")["items"] == []
    assert "succeeded" in mlops(stack, "pipelines").stdout
    assert "not found" in fails(stack, "logs", "no-such-pipeline", "-f")


def test_models_predict_and_rollback(stack: Stack, tmp_path: Path) -> None:
    (model,) = ok_json(stack, "models")["models"]
    assert model["name"] == MODEL and model["active_version"] == "1", model
    assert MODEL in mlops(stack, "models").stdout

    csv_file = tmp_path / "rows.csv"
    csv_file.write_text(IRIS_CSV)
    answers = [
        ok_json(stack, "predict", MODEL, "--data", json.dumps(ROWS)),
        ok_json(stack, "predict", MODEL, "--csv", str(csv_file)),
        ok_json(stack, "predict", MODEL, stdin=IRIS_CSV),
        ok_json(stack, "predict", MODEL, stdin=json.dumps({"data": ROWS})),
    ]
    assert {(a["version"], tuple(a["predictions"])) for a in answers} == {("1", (0, 1, 2))}
    table = mlops(stack, "predict", MODEL, "--data", json.dumps(ROWS))
    assert f"{MODEL} version 1" in table.stdout, table.stdout
    # The gateway's 422 names the expected shape.
    assert "shape" in fails(stack, "predict", MODEL, "--data", "[[1, 2]]")

    assert f"model '{MODEL}' has no version '99'" in fails(stack, "rollback", MODEL, "99")
    rolled = ok_json(stack, "rollback", MODEL, "1")
    assert rolled["active_version"] == "1", rolled


def start_held_rollout(stack: Stack, repo: LocalRepo, repo_id: int, version: str) -> str:
    """Push a retuned notebook, trigger it; the pipeline, once its canary is running."""
    repo.commit({notebooks.PATH: notebooks.retuned(c=0.05, version=version)})
    pipeline_id = ok_json(stack, "trigger", str(repo_id))["id"]

    def running() -> bool:
        done = mlops(stack, "rollout", "status", MODEL, "-o", "json")
        return done.returncode == 0 and json.loads(done.stdout)["pipeline_id"] == pipeline_id

    wait_for("the canary to start", running)
    return pipeline_id


def test_rollout_status_abort_and_promote(stack: Stack, repo: LocalRepo) -> None:
    assert "no rollout running" in fails(stack, "rollout", "status", MODEL)
    with api(stack) as client:
        assert client.put(f"/models/{MODEL}/policy", json=HELD_CANARY).status_code == 200
    (repo_id,) = [r["id"] for r in ok_json(stack, "repos", "list")]

    aborted_id = start_held_rollout(stack, repo, repo_id, "2.0.0")
    shown = mlops(stack, "rollout", "status", MODEL)
    assert shown.returncode == 0 and "canary" in shown.stdout, shown.stdout
    # NOTE: "running" is the gateway's 202: asked, its driver not done yet; the log's end says.
    assert ok_json(stack, "rollout", "abort", MODEL)["state"] in ("aborted", "running")
    code, entries, stderr = follow(stack, aborted_id)
    assert (code, entries[-1]) == (1, {"end": "failed"}), (entries[-5:], stderr)

    promoted_id = start_held_rollout(stack, repo, repo_id, "3.0.0")
    assert ok_json(stack, "rollout", "promote", MODEL)["state"] in ("promoted", "running")
    code, entries, stderr = follow(stack, promoted_id)
    assert (code, entries[-1]) == (0, {"end": "succeeded"}), (entries[-5:], stderr)
    (model,) = ok_json(stack, "models")["models"]
    assert model["active_version"] == "3", model
    assert "no rollout running" in fails(stack, "rollout", "abort", MODEL)


def test_repos_rm(stack: Stack, tmp_path: Path) -> None:
    other = make_local_repo(tmp_path, "other", {notebooks.PATH: notebooks.example()})
    added = ok_json(stack, "repos", "add", other.url, "--notebook", notebooks.PATH)
    removed = mlops(stack, "repos", "rm", str(added["id"]))
    assert removed.returncode == 0, removed.stderr
    assert added["id"] not in [r["id"] for r in ok_json(stack, "repos", "list")]
    assert "not found" in fails(stack, "repos", "rm", str(added["id"]))
