"""Run the planned services under honcho: prefixed logs, Redis and MLflow first, a banner once
everything answers, and on Ctrl-C or SIGTERM every process group stopped.

NOTE: honcho's `Manager` API rather than a generated Procfile and `honcho start`: each process
gets its own environment (the webhook secret reaches the gateway only, never a file on disk
or the worker's kernel), and the readiness watcher runs in this process to print the banner.
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping

import honcho.manager
from honcho.manager import Manager
from honcho.printer import Message, Printer

from launcher.readiness import Check, pending

SELF = "run"
STOP_GRACE_S = 20
"""Seconds between SIGTERM and SIGKILL on stop: MLflow can take ~14 s right after it started."""


def say(manager: Manager, text: str) -> None:
    """Print through honcho's event queue, so lines from this thread never interleave."""
    manager.events.put(Message("line", text, datetime.datetime.now(), SELF, None))


def watch_readiness(
    manager: Manager,
    checks: list[Check],
    timeout_s: float,
    banner: Callable[[float], str],
    stopped: threading.Event,
    outcome: dict[str, bool],
) -> None:
    """Say which services are still starting, then the banner; stop everything on timeout."""
    started = time.monotonic()
    waiting = list(checks)
    while waiting:
        time.sleep(0.25)
        if stopped.is_set():
            return
        elapsed = time.monotonic() - started
        still = pending(waiting)
        for check in waiting:
            if check not in still:
                say(manager, f"ready: {check.describe()} ({elapsed:.1f} s)")
        waiting = still
        if waiting and elapsed > timeout_s:
            names = ", ".join(check.describe() for check in waiting)
            say(manager, f"not ready after {timeout_s:g} s: {names}; stopping")
            outcome["ready"] = False
            manager.terminate()
            return
    outcome["ready"] = True
    say(manager, banner(time.monotonic() - started))


def supervise(
    commands: Mapping[str, tuple[str, dict[str, str]]],
    checks: list[Check],
    timeout_s: float,
    banner: Callable[[float], str],
) -> int:
    """Run `{name: (shell command, environment)}` until Ctrl-C, SIGTERM or one exits.

    Returns 0 when stopped by Ctrl-C/SIGTERM; non-zero when a service exited on its own or
    the stack was not ready in time."""
    # NOTE: honcho has no parameter for its 5 s grace before SIGKILL, only this module global.
    honcho.manager.KILL_WAIT = STOP_GRACE_S
    manager = Manager(Printer(sys.stdout))
    for name, (command, env) in commands.items():
        manager.add_process(name, command, env=env, cwd=os.getcwd())
    stopped = threading.Event()
    outcome: dict[str, bool] = {}
    watcher = threading.Thread(
        target=watch_readiness,
        args=(manager, checks, timeout_s, banner, stopped, outcome),
        daemon=True,
    )
    watcher.start()
    manager.loop()
    stopped.set()
    if outcome.get("ready") is False:
        return 1
    # Honcho reports 130/143 for Ctrl-C/SIGTERM: that is how `make run` is meant to end.
    return 0 if manager.returncode in (130, 143) else manager.returncode or 1
