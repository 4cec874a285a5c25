"""Hostile notebooks against a real worker and its real sandbox: what pushed code tries, and
what it gets. Each notebook reports what it found; the tests check those reports, the logs,
the artifacts and the host for any trace of the platform's secrets or of escaped code."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mlops_core import logstream
from mlops_core.db import Pipeline
from mlops_core.token_vault import KEY_FILE, TokenVault, read_or_create_key
from tests.pipeline_worker.conftest import REPO_TOKEN, SECRETS, Platform
from tests.pipeline_worker.support import TINY_MODEL, run_contract_notebook

SECRET_VALUES = [*SECRETS.values(), REPO_TOKEN]


@pytest.fixture(scope="module")
def worker(start_worker, fleet):
    return start_worker("attacks")


async def run_notebook(
    platform: Platform, tmp_path: Path, cells: dict[str, str], model_name: str
) -> Pipeline:
    # The token sealed as the gateway stores it (with the data directory's key).
    vault = TokenVault(read_or_create_key(platform.data_dir / KEY_FILE), "test")
    return await run_contract_notebook(
        platform.sessions,
        platform.redis_url,
        tmp_path,
        cells,
        model_name,
        token=vault.seal(REPO_TOKEN),
    )


def findings(pipeline: Pipeline) -> dict[str, object]:
    """The `FINDINGS {...}` line the attacking cell printed."""
    for line in (pipeline.log or "").splitlines():
        if "FINDINGS " in line:
            return json.loads(line.split("FINDINGS ", 1)[1])
    raise AssertionError(f"no findings in the log:\n{(pipeline.log or '')[-3000:]}")


def assert_no_secret_in(text: str, where: str) -> None:
    for secret in SECRET_VALUES:
        assert secret not in text, f"a secret reached {where}"


def files_containing(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits += [f"{path}: {n[:6]!r}..." for n in needles if n in data]
    return hits


SNOOP = """
import glob, json, os, socket
found = {"uid": os.getuid(), "pid": os.getpid()}
found["cap_eff"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
found["env"] = dict(os.environ)
environs = []
for path in glob.glob("/proc/[0-9]*/environ"):
    try:
        environs.append(open(path, "rb").read().decode("utf-8", "replace"))
    except OSError:
        pass
found["pids"] = sorted(int(p.split("/")[2]) for p in glob.glob("/proc/[0-9]*"))
found["proc_environs"] = environs
found["data_dir_visible"] = os.path.exists(DATA_DIR)
found["platform_source_visible"] = os.path.exists(os.path.join(REPO_ROOT, ".git"))
found["git_dir_in_checkout"] = os.path.exists("../.git") or os.path.exists(".git")
writable = []
import importlib.util, sys
ours = os.path.dirname(importlib.util.find_spec("pipeline_worker").origin)
for folder in ["/", "/etc", "/usr", os.path.dirname(os.__file__), sys.prefix, ours, "/root"]:
    try:
        with open(os.path.join(folder, "probe-write"), "w") as f:
            f.write("x")
        writable.append(folder)
    except OSError:
        pass
found["writable_outside"] = writable
def dial(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return "connected"
    except OSError as exc:
        return type(exc).__name__
found["redis"] = dial(REDIS_PORT)
found["mlflow"] = dial(MLFLOW_PORT)
print("FINDINGS " + json.dumps(found))
"""


async def test_a_notebook_reaches_no_secret_no_platform_file_no_platform_port(
    platform: Platform, worker, tmp_path: Path, redis_url: str, mlflow_uri: str
):
    from urllib.parse import urlsplit

    preamble = (
        f"DATA_DIR = {str(platform.data_dir)!r}\n"
        f"REPO_ROOT = {str(Path(__file__).resolve().parents[2])!r}\n"
        f"REDIS_PORT = {urlsplit(redis_url).port}\nMLFLOW_PORT = {urlsplit(mlflow_uri).port}\n"
    )
    pipeline = await run_notebook(
        platform, tmp_path, {**TINY_MODEL, "mlops:data": preamble + SNOOP}, "snoop"
    )
    assert pipeline.status == "succeeded", (pipeline.error_stage, pipeline.error_message)
    seen = findings(pipeline)
    # What it read of every environment it could see went into its own log: no secret there.
    assert seen["env"]["HOME"] == "/tmp" and seen["proc_environs"]
    assert_no_secret_in(json.dumps(seen), "the notebook's view")
    # No capability at all; a root worker boxes as nobody, an unprivileged one stays its own
    # user (uid 0 inside its user namespace maps to it).
    assert int(seen["cap_eff"], 16) == 0
    assert seen["uid"] == (65534 if os.geteuid() == 0 else 0)
    # Its own PID namespace: the kernel, papermill and little else, numbered from 1.
    assert min(seen["pids"]) == 1 and len(seen["pids"]) < 20, seen["pids"]
    assert seen["data_dir_visible"] is False
    assert seen["platform_source_visible"] is False
    assert seen["git_dir_in_checkout"] is False
    assert seen["writable_outside"] == []
    assert seen["redis"] != "connected" and seen["mlflow"] != "connected"

    assert_no_secret_in(pipeline.log or "", "the pipeline log")
    assert_no_secret_in(
        "\n".join(
            e.get("line", "")
            for e in await logstream.history(platform_redis(platform), pipeline.id)
        ),
        "the Redis log",
    )
    client = MlflowClient(tracking_uri=platform.mlflow_uri)
    notebook = client.download_artifacts(pipeline.mlflow_run_id, "notebook", str(tmp_path / "a"))
    assert_no_secret_in(
        "".join(p.read_text() for p in Path(notebook).rglob("*.ipynb")), "the kept notebook"
    )
    assert files_containing(platform.data_dir, [s.encode() for s in SECRET_VALUES]) == []


def platform_redis(platform: Platform):
    from redis.asyncio import Redis

    return Redis.from_url(platform.redis_url)


async def test_a_pickle_that_runs_code_on_load_runs_it_only_in_the_box(
    platform: Platform, worker, tmp_path: Path
):
    marker = f"/tmp/pwned-{uuid.uuid4().hex}"
    in_data_dir = platform.data_dir / "pwned"
    evil = (
        "import os, joblib\n"
        "class Payload:\n"
        "    def __reduce__(self):\n"
        "        return (os.system, ('echo PWNED-INSIDE $(grep CapEff /proc/self/status); "
        f"touch {marker} "
        f"{in_data_dir}',))\n"
        "joblib.dump(Payload(), MODEL_OUTPUT_PATH)"
    )
    pipeline = await run_notebook(
        platform, tmp_path, {**TINY_MODEL, "mlops:export": evil}, "pickled"
    )
    log = pipeline.log or ""
    # It ran, in the conversion box (its output is in the log), and touched nothing outside.
    assert "PWNED-INSIDE CapEff: 0000000000000000" in log
    assert not Path(marker).exists() and not in_data_dir.exists()
    assert pipeline.status == "failed" and pipeline.error_stage == "converting", (
        pipeline.error_stage,
        pipeline.error_message,
    )


async def test_no_process_a_notebook_starts_outlives_its_stage(
    platform: Platform, worker, tmp_path: Path
):
    tag = f"orphan-{uuid.uuid4().hex[:12]}"
    spawn = (
        "import os, subprocess\n"
        f"subprocess.Popen(['sleep', '600', '{tag}'], start_new_session=True)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execvp('sh', ['sh', '-c', 'exec -a {tag} sleep 601'])\n"
        "    os._exit(0)\n"
        "import time; time.sleep(0.5)"
    )
    pipeline = await run_notebook(platform, tmp_path, {**TINY_MODEL, "mlops:data": spawn}, "orph")
    assert pipeline.status == "succeeded", (pipeline.error_stage, pipeline.error_message)
    survivors = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if tag.encode() in cmdline.read_bytes():
                survivors.append(cmdline.parent.name)
        except OSError:
            pass
    assert survivors == []


async def test_a_planted_link_gets_nothing_out_of_the_platform(
    platform: Platform, worker, tmp_path: Path
):
    # The exported "model" is a link to the platform's database; the executed notebook is
    # replaced by a link too. Outside the box, neither may be followed.
    plant = (
        "import os\n"
        f"os.symlink({str(platform.data_dir / 'mlops.db')!r}, MODEL_OUTPUT_PATH)\n"
        "os.symlink('/etc/shadow', os.path.join(os.path.dirname(MODEL_OUTPUT_PATH), 'x'))"
    )
    pipeline = await run_notebook(
        platform, tmp_path, {**TINY_MODEL, "mlops:export": plant}, "linked"
    )
    assert pipeline.status == "failed", pipeline.status
    assert pipeline.error_stage in ("executing", "converting"), pipeline.error_message
    client = MlflowClient(tracking_uri=platform.mlflow_uri)
    artifacts = [a.path for a in client.list_artifacts(pipeline.mlflow_run_id)]
    assert "joblib" not in artifacts


async def test_a_memory_hog_fails_with_a_message_and_the_worker_lives_on(
    platform: Platform, worker, tmp_path: Path
):
    hog = "blocks = []\nwhile True:\n    blocks.append(bytearray(256 * 1024 * 1024))"
    pipeline = await run_notebook(platform, tmp_path, {**TINY_MODEL, "mlops:data": hog}, "hog")
    assert pipeline.status == "failed" and pipeline.error_stage == "executing"
    assert "MemoryError" in (pipeline.error_message or "") or "memory" in (
        pipeline.error_message or ""
    )
    after = await run_notebook(platform, tmp_path, TINY_MODEL, "after-hog")
    assert after.status == "succeeded", (after.error_stage, after.error_message)


async def test_the_notebooks_own_mlflow_calls_land_in_the_pipelines_run(
    platform: Platform, worker, tmp_path: Path
):
    logging_cell = (
        "import mlflow\n"
        "mlflow.log_param('depth', 2)\n"
        "for step in range(3):\n"
        "    mlflow.log_metric('loss', 1.0 / (step + 1), step=step)\n"
        "mlflow.set_tag('team', 'attackers')\n"
        "mlflow.set_tag('mlops.status', 'forged')"
    )
    pipeline = await run_notebook(
        platform, tmp_path, {**TINY_MODEL, "mlops:evaluation": logging_cell}, "logs-mlflow"
    )
    assert pipeline.status == "succeeded", (pipeline.error_stage, pipeline.error_message)
    client = MlflowClient(tracking_uri=platform.mlflow_uri)
    run = client.get_run(pipeline.mlflow_run_id)
    assert run.data.params["depth"] == "2"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [
        1.0,
        0.5,
        pytest.approx(1 / 3),
    ]
    assert run.data.tags["team"] == "attackers"
    assert run.data.tags["mlops.status"] == "succeeded"


async def test_a_print_bomb_keeps_its_first_and_last_lines_and_its_end(
    platform: Platform, worker, tmp_path: Path
):
    bomb = "for i in range(25_000):\n    print(f'bomb line {i}')"
    pipeline = await run_notebook(platform, tmp_path, {**TINY_MODEL, "mlops:data": bomb}, "bomb")
    assert pipeline.status == "succeeded", (pipeline.error_stage, pipeline.error_message)
    log = pipeline.log or ""
    assert "| bomb line 0" in log and "| bomb line 24999" in log
    assert "lines were dropped here" in log
    assert log.rstrip().endswith("pipeline succeeded")
    assert "[deploying] started" in log
    assert len(log.splitlines()) < 10_000
