"""`make run` under supervisord: a dead process is restarted while the rest keeps serving, a
crash loop ends FATAL and is reported, output keeps its prefixes, nothing is left after a stop."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks.processes import port_open
from launcher import supervisor
from launcher.output import SUPERVISORD_DATE, Console, FollowedLog
from tests.deploy.platform import Platform, platform_env
from tests.deploy.proctree import descendants, find, survivors

RESTART_BUDGET_S = 20


def test_console_prefixes_every_line_with_its_program() -> None:
    out = io.StringIO()
    console = Console(["run", "inference.0"], out)
    console.say("run", "two\nlines")
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d run         \| two\n\d\d:\d\d:\d\d run         \| lines\n",
        out.getvalue(),
    )


def test_a_followed_log_reads_new_lines_across_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "gateway.log"
    path.write_bytes(b"from a previous run\n")
    log = FollowedLog(path)
    assert log.lines() == []
    with path.open("ab") as f:
        f.write(b"one\ntw")
    assert log.lines() == ["one"]
    # supervisord's rotation: the file is renamed away and a new one opened in its place.
    with path.open("ab") as f:
        f.write(b"o\r\n")
    path.rename(tmp_path / "gateway.log.1")
    path.write_bytes(b"three\nunfinished")
    assert log.lines() == ["two", "three"]
    assert log.lines(final=True) == ["unfinished"]
    late = FollowedLog(tmp_path / "worker.log")
    (tmp_path / "worker.log").write_bytes(b"first line\n")
    assert late.lines() == ["first line"]
    dated = tmp_path / "supervisord.log"
    dated.write_bytes(b"2026-12-02 06:50:05,112 WARN exited: redis (exit status 1; not expected)\n")
    supervisord = FollowedLog(dated, strip=SUPERVISORD_DATE)
    with dated.open("ab") as f:
        f.write(b"2026-12-02 06:50:06,001 INFO spawned: 'redis' with pid 7\n")
    assert supervisord.lines() == ["INFO spawned: 'redis' with pid 7"]


def replicas(platform: Platform, index: int) -> list[int]:
    """The PIDs running replica `index` (its wait wrapper exec'd it: one, the program's)."""
    return find(platform.process.pid, "inference", "--replica-id", f"replica-{index}")


def replica(platform: Platform, index: int) -> int:
    (pid,) = replicas(platform, index)
    return pid


def assert_all_gone(platform: Platform, tree: dict[int, int], ports: list[int]) -> None:
    assert tree, "the launcher had started no process"
    assert survivors(tree) == [], f"left running:\n{platform.output()[-3000:]}"
    assert [p for p in ports if port_open(p)] == []


def wait_for(condition: object, timeout_s: float, what: str, platform: Platform) -> float:
    """Seconds until `condition()` held; fails naming `what` with the launcher's output."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        assert platform.process.alive(), f"the launcher exited:\n{platform.output()[-3000:]}"
        try:
            if condition():
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout_s} s:\n{platform.output()[-3000:]}")


def test_a_killed_replica_comes_back_a_crash_loop_is_reported_nothing_is_left(
    tmp_path: Path,
) -> None:
    env = platform_env(tmp_path / "data", replicas=2)
    platform = Platform("platform", tmp_path, env, only=["redis", "mlflow", "inference"]).start()
    try:
        platform.wait_ready()
        http = [platform.port("MLOPS_HTTP_PORT") + i for i in (0, 1)]
        before = platform.tree()
        victim = replica(platform, 0)
        gone = {victim: before[victim], **{p: before[p] for p in descendants(victim)}}
        others = {pid: start for pid, start in before.items() if pid not in gone}

        os.kill(victim, signal.SIGKILL)
        took = wait_for(
            lambda: (
                replicas(platform, 0) not in ([], [victim])
                and httpx.get(f"http://127.0.0.1:{http[0]}/health").status_code == 200
            ),
            RESTART_BUDGET_S,
            "replica-0 restarted and healthy",
            platform,
        )
        assert took < RESTART_BUDGET_S
        assert survivors(others) == list(others), "a process other than the victim changed"
        assert "exited: inference.0 (terminated by SIGKILL; not expected)" in platform.output()
        status = platform.supervisorctl("status")
        # STARTING until it has stayed up START_SECS; it serves already.
        assert re.search(r"inference:inference\.0 +(STARTING|RUNNING)", status.stdout), status
        # NOTE: STARTING too: a fast start and restart fit in redis's first START_SECS; that it
        # was never restarted is what `survivors(others)` above checks.
        assert re.search(r"^redis +(STARTING|RUNNING)", status.stdout, re.M), status

        # A crash loop: replica-1 killed, and its HTTP port taken before it can start again.
        with socket.socket() as taken:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            os.kill(replica(platform, 1), signal.SIGKILL)
            # Freed once the kernel has reaped the replica, long before a new one has imported.
            deadline = time.monotonic() + 2
            while True:
                try:
                    taken.bind(("127.0.0.1", http[1]))
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the killed replica's port stayed busy"
                    time.sleep(0.01)
            taken.listen()
            wait_for(
                lambda: "gave up: inference.1 entered FATAL state" in platform.output(),
                90,
                "inference.1 FATAL",
                platform,
            )
            wait_for(
                lambda: "inference:inference.1 is no longer restarted" in platform.output(),
                5,
                "the launcher's report",
                platform,
            )
            # The rest keeps serving.
            assert httpx.get(f"http://127.0.0.1:{http[0]}/health").status_code == 200
            assert re.search(r"inference\.1 .*\(exit status \d+; not expected\)", platform.output())
            assert platform.process.alive()

        tree = platform.tree()
        assert platform.stop(signal.SIGTERM) == 0
        ports = [platform.port(k) for k in ("MLOPS_REDIS_PORT", "MLOPS_MLFLOW_PORT")]
        assert_all_gone(platform, {**before, **tree}, [*ports, *http])
        out = platform.output()
        # Reverse dependency order: the replica, then MLflow, then Redis.
        order = [out.index(f"stopped: {name} ") for name in ("inference.0", "mlflow", "redis")]
        assert order == sorted(order), out[-3000:]
        assert "SIGKILL" not in out.split("gave up: inference.1")[1], "a stop needed SIGKILL"
        password = (tmp_path / "data" / "redis_password").read_text().strip()
        assert password not in out
    finally:
        platform.process.stop()


def test_not_ready_in_time_stops_everything_and_exits_non_zero(tmp_path: Path) -> None:
    env = {**platform_env(tmp_path / "data", replicas=1), "MLOPS_READY_TIMEOUT_S": "4"}
    # Replicas without the Redis and MLflow they wait for can never be ready.
    platform = Platform("platform", tmp_path, env, only=["inference"]).start()
    try:
        wait_for(lambda: len(platform.tree()) >= 2, 30, "supervisord and a replica", platform)
        tree = platform.tree()
        assert platform.process.proc is not None
        assert platform.process.proc.wait(timeout=60) == 1
        assert "not ready after 4 s" in platform.output()
        assert_all_gone(platform, tree, [platform.port("MLOPS_HTTP_PORT")])
        assert "platform ready" not in platform.output()
    finally:
        platform.process.stop()


def test_when_supervisord_dies_the_launcher_stops_what_it_left(tmp_path: Path) -> None:
    env = platform_env(tmp_path / "data")
    platform = Platform("platform", tmp_path, env, only=["redis"]).start()
    try:
        platform.wait_ready()
        # A second start on the same data directory is refused before it touches anything.
        second = subprocess.run(
            [sys.executable, "-m", "launcher", "--only", "redis"],
            env=platform.process.env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2, second.stderr
        assert f"another `make run` is using {tmp_path / 'data'}" in second.stderr
        assert platform.supervisorctl("status").returncode == 0  # its conf is untouched
        tree = platform.tree()
        (supervisord,) = find(platform.process.pid, "supervisor.supervisord")
        os.kill(supervisord, signal.SIGKILL)
        assert platform.process.proc is not None
        assert platform.process.proc.wait(timeout=40) == 128 + signal.SIGKILL
        assert "supervisord exited on its own (SIGKILL)" in platform.output()
        assert_all_gone(platform, tree, [platform.port("MLOPS_REDIS_PORT")])
    finally:
        platform.process.stop()


def test_a_launcher_killed_outright_takes_its_programs_with_it(tmp_path: Path) -> None:
    env = platform_env(tmp_path / "data")
    platform = Platform("platform", tmp_path, env, only=["redis"]).start()
    try:
        platform.wait_ready()
        tree = platform.tree()
        platform.process.kill()  # SIGKILL: no handler runs; supervisord gets SIGTERM
        deadline = time.monotonic() + 30
        while survivors(tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert_all_gone(platform, tree, [platform.port("MLOPS_REDIS_PORT")])
    finally:
        platform.process.stop()


def test_programs_of_a_dead_supervisord_are_found_by_its_session_without_their_pids() -> None:
    # A stand-in for supervisord: a session leader whose child leads its own process group,
    # as supervisord's programs do. The leader is killed; the child is found and stopped
    # with no pid given, from the session alone.
    leader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "child = subprocess.Popen(['sleep', '60'], process_group=0)\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert leader.stdout is not None
    child = int(leader.stdout.readline())
    try:
        assert supervisor.session_groups(leader.pid) == {leader.pid, child}
        leader.kill()
        leader.wait(timeout=10)
        out = io.StringIO()
        supervisor.stop_orphans([], leader.pid, Console(["run"], out))
        assert "stopping the 1 programs supervisord left running" in out.getvalue()
        assert supervisor.session_groups(leader.pid) == set()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child, signal.SIGKILL)
