"""Run the planned services under supervisord: a program that dies is restarted with backoff
while the others keep serving, every line of output reaches our stdout with its program's
name, a banner says when everything answers, and Ctrl-C or SIGTERM stops every process group
in reverse priority order (gateway and worker first, Redis last).

NOTE: supervisord runs in the foreground as our child, in a session of its own: a terminal's
Ctrl-C reaches only us and we decide how the stack stops (one SIGTERM to supervisord), and
supervisord gets SIGTERM too if we die, however we die (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from supervisor.xmlrpc import SupervisorTransport

from launcher.output import SUPERVISORD_DATE, Console, FollowedLog, LogTail
from launcher.readiness import Check, pending
from launcher.supervisord_conf import (
    START_RETRIES,
    START_SECS,
    STOP_WAIT_S,
    SUPERVISORD,
    USERNAME,
    Program,
    SupervisorFiles,
    render,
)

SELF = "run"
POLL_S = 0.25
PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


@dataclass
class Outcome:
    failure: str | None = None
    """Why the launcher stopped the stack itself (not ready in time, a program that cannot
    start); None while it has not."""
    pids: dict[str, int] = field(default_factory=dict)
    """Each program's PID when last seen: its process group, if supervisord dies first."""


class Control:
    """supervisord's XML-RPC interface, on its unix socket (what `supervisorctl` uses)."""

    def __init__(self, socket: Path, password: str) -> None:
        transport = SupervisorTransport(USERNAME, password, f"unix://{socket}")
        self.proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def processes(self) -> list[dict[str, Any]] | None:
        """supervisord's view of every program; None while it does not answer."""
        try:
            answer = self.proxy.supervisor.getAllProcessInfo()
        except (OSError, xmlrpc.client.Error, http.client.HTTPException):
            return None
        # NOTE: XML-RPC answers are untyped; supervisord documents this one as an array of
        # structs, one per process.
        return cast(list[dict[str, Any]], answer)


def process_name(info: Mapping[str, Any]) -> str:
    """The name `supervisorctl` knows a program by: `inference:inference.0`, `gateway`."""
    name, group = str(info["name"]), str(info["group"])
    return name if name == group else f"{group}:{name}"


def watch(
    control: Control,
    checks: list[Check],
    timeout_s: float,
    banner: Callable[[float], str],
    console: Console,
    files: SupervisorFiles,
    stop_all: Callable[[], None],
    stopped: threading.Event,
    outcome: Outcome,
) -> None:
    """Say which services are still starting, then the banner; report every program that
    gives up (FATAL). Before the banner, a program that gives up or a timeout stops everything:
    the platform cannot become ready. After it, the rest keeps serving."""
    started = time.monotonic()
    waiting = list(checks)
    ready = False
    fatal: set[str] = set()
    while not stopped.wait(POLL_S):
        elapsed = time.monotonic() - started
        infos = control.processes()
        if infos is not None:
            outcome.pids = {process_name(i): int(i["pid"]) for i in infos if i["pid"]}
            now_fatal = {
                process_name(i): str(i["name"]) for i in infos if i["statename"] == "FATAL"
            }
            for name in sorted(set(now_fatal) - fatal):
                log = files.log(now_fatal[name])
                tries = f"it died {START_RETRIES + 1} times within {START_SECS} s of starting"
                if not ready:
                    outcome.failure = f"{name} cannot start ({tries}; see {log}); stopping"
                    console.say(SELF, outcome.failure)
                    stop_all()
                    return
                console.say(
                    SELF,
                    f"{name} is no longer restarted (FATAL: {tries}); the rest keeps serving."
                    f" Its log: {log}. Start it again: {files.supervisorctl()} start {name}",
                )
            fatal = set(now_fatal)
        if ready:
            continue
        still = pending(waiting)
        for check in waiting:
            if check not in still:
                console.say(SELF, f"ready: {check.describe()} ({elapsed:.1f} s)")
        waiting = still
        if not waiting:
            ready = True
            console.say(SELF, banner(time.monotonic() - started))
        elif elapsed > timeout_s:
            names = ", ".join(check.describe() for check in waiting)
            outcome.failure = f"not ready after {timeout_s:g} s: {names}; stopping"
            console.say(SELF, outcome.failure)
            stop_all()
            return


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGTERM it when the launcher dies."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def session_groups(session: int) -> set[int]:
    """The process groups of every process still in `session`."""
    groups = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # After the command, in parentheses: state, ppid, pgrp, session.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[3]) == session:
            groups.add(int(fields[2]))
    return groups


def stop_orphans(pids: Iterable[int], session: int, console: Console) -> None:
    """supervisord died without stopping its programs: stop their process groups (each
    program leads its own) as it would have, SIGTERM then SIGKILL after the same grace.

    NOTE: `pids` is the watch thread's last view of the programs, which was once seen
    empty with a program running (the suite, under load; cause not found). supervisord led
    its own session, which its programs stay in, so the session finds them whatever that
    view held."""
    groups = [g for g in {*pids, *session_groups(session)} if _group_alive(g)]
    if not groups:
        return
    console.say(SELF, f"stopping the {len(groups)} programs supervisord left running")
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    while (groups := [g for g in groups if _group_alive(g)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def supervise(
    programs: list[Program],
    supervisord_env: Mapping[str, str],
    files: SupervisorFiles,
    checks: list[Check],
    timeout_s: float,
    banner: Callable[[float], str],
) -> int:
    """Run `programs` under supervisord until Ctrl-C, SIGTERM or SIGHUP.

    Returns 0 when stopped by a signal; 1 when the stack was not ready in time or a program
    could not start; supervisord's own status (never 0) when it died on its own."""
    directory = Path.cwd()
    password = secrets.token_hex(16)
    files.prepare()
    files.write(render(programs, supervisord_env, files, password, directory))
    console = Console([SELF, SUPERVISORD, *(p.name for p in programs)])
    # supervisord's own lines (spawned, exited with which status, gave up...) come first.
    logs = {SUPERVISORD: FollowedLog(files.log(SUPERVISORD), strip=SUPERVISORD_DATE)}
    logs.update({p.name: FollowedLog(files.log(p.name)) for p in programs})
    tail = LogTail(logs, console)
    # What it prints before its log is open (a bad config, a busy socket) lands in its log too.
    with files.log(SUPERVISORD).open("ab") as early:
        supervisord = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "--nodaemon", "-c", str(files.conf)],
            env=dict(supervisord_env),
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=early,
            stderr=early,
            start_new_session=True,
            # NOTE: preexec_fn is unsafe once threads run; ours start after this.
            preexec_fn=_die_with_parent,
        )
    asked = threading.Event()

    def stop_all() -> None:
        if supervisord.poll() is None:
            supervisord.send_signal(signal.SIGTERM)

    def on_signal(signum: int, frame: object) -> None:
        asked.set()
        stop_all()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    stopped = threading.Event()
    outcome = Outcome()
    control = Control(files.socket, password)
    threads = [
        threading.Thread(target=tail.follow, args=(stopped,), daemon=True),
        threading.Thread(
            target=watch,
            args=(control, checks, timeout_s, banner, console, files, stop_all, stopped, outcome),
            daemon=True,
        ),
    ]
    for thread in threads:
        thread.start()
    returncode = supervisord.wait()
    stopped.set()
    for thread in threads:
        thread.join(timeout=5)
    if outcome.failure is not None:
        return 1
    if asked.is_set():
        return 0
    status = f"status {returncode}" if returncode >= 0 else signal.Signals(-returncode).name
    console.say(SELF, f"supervisord exited on its own ({status})")
    stop_orphans(outcome.pids.values(), supervisord.pid, console)
    if returncode < 0:
        return 128 - returncode  # the shell's convention for "killed by signal N"
    return returncode or 1
