"""Warm boxes: each worker's next box, started ahead, serves one pipeline and is replaced; a
dead box is never used; a pipeline in a warm box sees nothing of the one before it; with
`MLOPS_WARM_BOX=false` each pipeline starts its own box. Real workers, sandbox and kernels."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import tempfile
from pathlib import Path

import pytest

from mlops_core.db import Pipeline
from mlops_core.settings import Settings
from pipeline_worker.sandbox.unboxed import Unboxed
from pipeline_worker.warm_box import BoxSupply
from tests.deploy.proctree import descendants
from tests.pipeline_worker.conftest import Platform
from tests.pipeline_worker.support import TINY_MODEL, run_contract_notebook

BOX_LINE = re.compile(r"sandbox (box-[0-9a-f]+): (warm, started [\d.]+s ago|starting now)")


@pytest.fixture(scope="module")
def worker(start_worker, fleet):
    return start_worker("warm")


async def run_notebook(
    platform: Platform, tmp_path: Path, cells: dict[str, str], model_name: str
) -> Pipeline:
    return await run_contract_notebook(
        platform.sessions, platform.redis_url, tmp_path, cells, model_name
    )


def box_of(pipeline: Pipeline) -> tuple[str, bool]:
    """The box a pipeline ran in, and whether it was warm (from its log)."""
    found = BOX_LINE.search(pipeline.log or "")
    assert found, (pipeline.log or "")[-3000:]
    return found.group(1), found.group(2).startswith("warm")


def succeeded(pipeline: Pipeline) -> None:
    assert pipeline.status == "succeeded", (
        pipeline.error_stage,
        pipeline.error_message,
        (pipeline.log or "")[-2000:],
    )


def box_processes(data_dir: Path, box: str) -> list[int]:
    """PIDs whose command line names the box's directory (the sandbox's `unshare` and up)."""
    needle = str(data_dir / "pipelines" / "boxes" / box).encode()
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if needle in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            pass
    return pids


async def warm_box_of(data_dir: Path, timeout_s: float = 60) -> str:
    """The worker's idle box once it exists (its directory under the data directory)."""
    boxes = data_dir / "pipelines" / "boxes"
    for _ in range(int(timeout_s / 0.2)):
        names = [p.name for p in boxes.iterdir()] if boxes.exists() else []
        if len(names) == 1 and box_processes(data_dir, names[0]):
            return names[0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"no single idle box in {boxes}")


async def test_a_warm_box_serves_one_pipeline_and_is_replaced(
    platform: Platform, worker, tmp_path: Path
):
    first = await run_notebook(platform, tmp_path, TINY_MODEL, "warm-once")
    succeeded(first)
    waiting = await warm_box_of(platform.data_dir)
    second = await run_notebook(platform, tmp_path, TINY_MODEL, "warm-twice")
    succeeded(second)
    (box1, _), (box2, warm2) = box_of(first), box_of(second)
    assert box1 != box2 and box2 == waiting and warm2
    # Used once: its directory went with its pipeline, and its processes with it.
    assert not (platform.data_dir / "pipelines" / "boxes" / box1).exists()
    assert box_processes(platform.data_dir, box1) == []
    timings = second.stage_timings
    assert {"queued", "executing", "deploying", "recording"} <= set(timings), timings


async def test_a_dead_warm_box_is_not_used(platform: Platform, worker, tmp_path: Path):
    doomed = await warm_box_of(platform.data_dir)
    # As the OOM killer or an operator would: the box's whole process group. (Its `unshare`
    # alone is not enough: the box's first process dropped its user, which clears the
    # parent-death signal, so it would live on and still be a working box.)
    for pid in box_processes(platform.data_dir, doomed):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
    pipeline = await run_notebook(platform, tmp_path, TINY_MODEL, "after-dead-box")
    succeeded(pipeline)
    assert box_of(pipeline)[0] != doomed


SNOOP_PREVIOUS = """
import glob, json, os
found = {
    "marker_env": os.environ.get("LEFT_BY_FIRST"),
    "run_id": os.environ.get("MLFLOW_RUN_ID"),
    "left_files": sorted(glob.glob("/pipeline/**/left-by-first*", recursive=True)
                         + glob.glob("/tmp/**/left-by-first*", recursive=True)),
    "box_dirs": sorted(glob.glob(BOXES + "/*")),
    "globals": [n for n in ("left_by_first",) if n in globals()],
}
print("FINDINGS " + json.dumps(found))
"""


def findings(pipeline: Pipeline) -> dict[str, object]:
    for line in (pipeline.log or "").splitlines():
        if "FINDINGS " in line:
            return json.loads(line.split("FINDINGS ", 1)[1])
    raise AssertionError(f"no findings in the log:\n{(pipeline.log or '')[-3000:]}")


async def test_a_pipeline_sees_nothing_of_the_one_before_in_its_warm_box(
    platform: Platform, worker, tmp_path: Path
):
    leave = (
        "import os\n"
        "os.environ['LEFT_BY_FIRST'] = 'yes'\n"
        "left_by_first = 1\n"
        "open('/pipeline/output/left-by-first.txt', 'w').write('x')\n"
        "open('/tmp/left-by-first.txt', 'w').write('x')\n"
        "print('FINDINGS ' + __import__('json').dumps({'run_id': os.environ['MLFLOW_RUN_ID']}))"
    )
    first = await run_notebook(platform, tmp_path, {**TINY_MODEL, "mlops:data": leave}, "leaver")
    succeeded(first)
    await warm_box_of(platform.data_dir)
    boxes = f"BOXES = {str(platform.data_dir / 'pipelines' / 'boxes')!r}\n"
    second = await run_notebook(
        platform, tmp_path, {**TINY_MODEL, "mlops:data": boxes + SNOOP_PREVIOUS}, "snooper"
    )
    succeeded(second)
    assert box_of(second)[1], "the second pipeline should have had a warm box"
    seen = findings(second)
    assert seen["marker_env"] is None and seen["globals"] == [] and seen["left_files"] == []
    assert seen["box_dirs"] == []  # the host's box directories are not in the box at all
    assert seen["run_id"] != findings(first)["run_id"]


async def test_an_old_or_dead_box_is_replaced_and_the_setting_turns_warm_boxes_off():
    """BoxSupply itself, with unboxed processes: fast enough to check every branch."""
    with tempfile.TemporaryDirectory() as root:
        old = BoxSupply(Unboxed(), Settings(warm_box_max_age_s=0.5), Path(root) / "a")
        old.open()
        await asyncio.sleep(1.0)
        box, warm = await old.take()
        assert not warm  # the idle one was older than its maximum age
        await box.discard()
        await old.close()
        assert list((Path(root) / "a").iterdir()) == []

        off = BoxSupply(Unboxed(), Settings(warm_box=False), Path(root) / "b")
        off.open()
        assert not off.warm
        box, warm = await off.take()
        assert not warm and box.alive
        await box.discard()
        await off.close()


async def test_a_box_whose_kernel_died_ends_and_is_not_used():
    """The OOM killer's likely pick is the kernel: the waiting box notices and ends."""
    with tempfile.TemporaryDirectory() as root:
        supply = BoxSupply(Unboxed(), Settings(), Path(root))
        supply.open()
        try:
            assert await supply.wait_ready(120)
            kernels = [
                pid
                for pid in descendants(os.getpid())
                if b"ipykernel" in Path(f"/proc/{pid}/cmdline").read_bytes()
            ]
            assert kernels
            doomed = supply._next
            assert doomed is not None
            for pid in kernels:
                os.kill(pid, signal.SIGKILL)
            for _ in range(100):
                if not doomed.alive:
                    break
                await asyncio.sleep(0.1)
            assert not doomed.alive
            box, _ = await supply.take()
            assert box is not doomed and box.alive
            await box.discard()
        finally:
            await supply.close()


async def test_with_warm_boxes_off_each_pipeline_starts_its_own(
    platform: Platform, worker, start_worker, tmp_path: Path
):
    worker.stop()
    start_worker("cold", MLOPS_WARM_BOX="false")
    pipeline = await run_notebook(platform, tmp_path, TINY_MODEL, "cold-box")
    succeeded(pipeline)
    assert box_of(pipeline)[1] is False
    assert not list((platform.data_dir / "pipelines" / "boxes").iterdir())
