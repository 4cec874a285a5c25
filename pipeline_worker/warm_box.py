"""Each worker's next box, started ahead: sandbox up, kernel started, libraries imported, so a
pipeline reaching its executing stage finds its notebook's kernel waiting (seconds saved on
every push, the first one after a start included).

Single use: a pipeline takes the box, the box serves that pipeline alone and is thrown away
with its directory; the next one starts once that pipeline no longer needs the CPU (served,
or ended), since on a small machine a box warming beside a running notebook slows it down.
A box that died, or waited longer than `MLOPS_WARM_BOX_MAX_AGE_S`, is replaced, never used.
With `MLOPS_WARM_BOX=false` (or a sandbox that cannot share a directory with a running box,
such as Kubernetes) each pipeline starts its own box when it needs it, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
import uuid
from pathlib import Path

from mlops_core.settings import Settings
from pipeline_worker.box_files import BoxDir
from pipeline_worker.pipeline_box import PipelineBox
from pipeline_worker.sandbox import Sandbox

logger = logging.getLogger(__name__)

# Sandboxes whose running box sees files the worker lays into its directory afterwards.
WARM_CAPABLE = ("local", "unsandboxed")
# How often an idle box is checked for death or old age.
CHECK_EVERY_S = 5.0


class BoxSupply:
    """Where a worker's pipelines get their boxes: the warm one when it is fit, else a new one."""

    def __init__(self, sandbox: Sandbox, settings: Settings, root: Path) -> None:
        self._sandbox, self._settings, self._root = sandbox, settings, root
        self.warm = settings.warm_box and sandbox.name in WARM_CAPABLE
        self._next: PipelineBox | None = None
        self._next_started: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._open = False

    def open(self) -> None:
        """The worker's start-up: sweep what a dead worker left, and start keeping a box
        ready (unless warm boxes are off)."""
        if self._open:
            return
        self._open = True
        self._sweep()
        if not self.warm:
            return
        self._watch = asyncio.create_task(self._watch_idle())
        self.replenish()

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait (at most `timeout_s`) until the idle box is warm; False if it is not (off,
        died, or slow)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            box = self._next
            if box is None or (box.started_at and not box.alive):
                return False
            if box.ready:
                return True
            await asyncio.sleep(0.1)
        return False

    async def take(self) -> tuple[PipelineBox, bool]:
        """A box for one pipeline, and whether it was started ahead. Not yet given to the
        pipeline: see `PipelineBox.take`."""
        box, self._next = self._next, None
        if box is not None:
            assert self._next_started is not None
            try:
                # NOTE: making its directory and MLflow store: a fraction of a second.
                await self._next_started
            except Exception:
                logger.warning("warm box %s did not start", box.name, exc_info=True)
            if box.alive and box.age_s() < self._settings.warm_box_max_age_s:
                return box, True
            logger.warning(
                "warm box %s unfit (alive: %s, age %.0fs); starting another; its last lines: %s",
                box.name,
                box.alive,
                box.age_s(),
                box.early_lines[-10:],
            )
            await box.discard()
        return await self._start(), False

    def replenish(self) -> None:
        """Start the next box if there is none (when the pipeline that took one is served or
        ended: see the module's note)."""
        if self.warm and self._open and self._next is None:
            self._next = self._new()
            self._next_started = asyncio.create_task(self._next.start(ahead=True))

    async def close(self) -> None:
        """The worker's shutdown: the idle box is killed and its directory removed."""
        self._open = False
        if self._watch is not None:
            self._watch.cancel()
        box, self._next = self._next, None
        if box is not None:
            if self._next_started is not None:
                with contextlib.suppress(Exception):
                    await self._next_started  # NOTE: a failed start is no news at shutdown
            await box.discard()

    def _sweep(self) -> None:
        """Remove box directories a worker that died left behind. Only those older than any
        box can live (its idle limit plus its wall time, after which its own backstop killed
        it): workers sharing the data directory may have live ones here."""
        settings = self._settings
        oldest = settings.warm_box_max_age_s + settings.sandbox_wall_time_s + 60
        if not self._root.is_dir():
            return
        now = time.time()
        for entry in self._root.iterdir():
            with contextlib.suppress(OSError):
                if now - entry.lstat().st_mtime > oldest:
                    shutil.rmtree(entry, ignore_errors=True)

    def _new(self) -> PipelineBox:
        name = f"box-{uuid.uuid4().hex[:12]}"
        host = self._root / name
        return PipelineBox(
            self._sandbox,
            BoxDir(host, self._sandbox.inside(host)),
            settings=self._settings,
            name=name,
        )

    async def _start(self) -> PipelineBox:
        box = self._new()
        await box.start(ahead=False)
        return box

    async def _watch_idle(self) -> None:
        """Replace an idle box that died after it got ready, or grew too old. A box that died
        before it was ready is left for the next pipeline to find (and start its own, which
        reports why): restarting it here would loop on a broken kernel."""
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            box = self._next
            if box is None or box.started_at == 0.0:
                continue
            old = box.age_s() >= self._settings.warm_box_max_age_s
            if old or (box.ready and not box.alive):
                self._next = None
                with contextlib.suppress(Exception):
                    await box.discard()
                self.replenish()
