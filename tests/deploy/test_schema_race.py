"""Processes that start together on a fresh database (two gateway workers, a gateway and a
worker) all create the schema without one of them failing."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

PROCESSES = 4


def _open(url: str, barrier: Any, answers: Any) -> None:
    from mlops_core.db import make_engine

    barrier.wait()
    try:
        make_engine(url).dispose()
        answers.put("ok")
    except Exception as exc:  # reported to the test, which names it
        answers.put(repr(exc)[:300])


def test_processes_creating_the_schema_at_once_all_start(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'race{round_}.sqlite'}"
        barrier, answers = ctx.Barrier(PROCESSES), ctx.Queue()
        processes = [ctx.Process(target=_open, args=(url, barrier, answers)) for _ in range(4)]
        for p in processes:
            p.start()
        results = [answers.get(timeout=60) for _ in processes]
        for p in processes:
            p.join(timeout=30)
        assert results == ["ok"] * PROCESSES, results
