"""The local box: Linux namespaces through util-linux (`unshare`, `setpriv`, `prlimit`).

`unshare` makes new PID, mount, IPC, UTS and (unless the network is allowed) network
namespaces; `box_init.sh` builds the box's root inside them and drops to an unprivileged user
(root runs boxes as `nobody`; an unprivileged worker uses a user namespace and stays its own
user without capabilities). The boxed process is PID 1 of its namespace, so when it ends,
or when `unshare` dies (it holds PR_SET_PDEATHSIG from `setpriv --pdeathsig`, and
`--kill-child`), the kernel kills every process left in the box: a double fork or a new
session cannot outlive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path, PurePosixPath

from pipeline_worker.cancellation import CancelCheck
from pipeline_worker.sandbox import BOX_WORKDIR, BoxJob, BoxOutcome, LineSink, SandboxUnavailable
from pipeline_worker.sandbox.process import run_process

BOX_INIT = Path(__file__).with_name("box_init.sh")
BOX_UID = 65534
# System directories the box sees read-only (when they exist); everything else is absent.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
SBIN_DIRS = ("/usr/sbin", "/sbin")
REQUIRED_TOOLS = ("unshare", "setpriv", "prlimit", "mount", "pivot_root", "ip")


def python_dirs() -> list[str]:
    """The platform's Python seen read-only inside: the interpreter's installation, the
    virtual environment, and the two packages the boxed entry points import (an editable
    install finds them at their source paths; nothing else of the checkout is shown)."""
    import mlops_core
    import pipeline_worker

    dirs = {sys.base_prefix, sys.prefix, str(Path(sys.executable).resolve().parents[1])}
    dirs.update(
        str(Path(folder).resolve()) for p in (mlops_core, pipeline_worker) for folder in p.__path__
    )
    return sorted(dirs)


class LocalSandbox:
    """Boxes made on this machine's kernel."""

    name = "local"

    def __init__(self) -> None:
        self._reason: str | None = None
        self._probed = False
        self.as_root = os.geteuid() == 0

    def inside(self, workdir: Path) -> PurePosixPath:
        return BOX_WORKDIR

    def unavailable_reason(self) -> str | None:
        if not self._probed:
            self._reason = self._probe()
            self._probed = True
        return self._reason

    def _probe(self) -> str | None:
        if not sys.platform.startswith("linux"):
            return f"boxes need Linux namespaces; this is {sys.platform}"
        # NOTE: an unprivileged user's PATH often lacks the sbin directories that hold
        # pivot_root and ip; box_init.sh looks there too.
        search = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])
        missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool, path=search) is None]
        if missing:
            return f"{', '.join(missing)} not found (util-linux and iproute2 provide them)"
        import subprocess

        with tempfile.TemporaryDirectory(prefix="mlops-box-probe-") as work:
            os.chmod(work, 0o777)
            # NOTE: the platform's Python itself must start inside, from wherever it is
            # installed (a checkout under /tmp included), not only a shell.
            python = str(Path(sys.prefix) / "bin" / "python")
            argv = self.argv(
                Path(work),
                [python, "-c", "import pipeline_worker.boxed; print('boxed')"],
                tmp_bytes=16 << 20,
                network=False,
                rlimits="",
            )
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=20, env={})
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"a test box did not start: {exc}"
        if done.returncode != 0 or "boxed" not in done.stdout:
            err = (done.stderr or done.stdout).strip().splitlines()
            return (
                "the kernel refused to make a box (namespaces disabled or not permitted: "
                f"{err[-1] if err else f'exit {done.returncode}'})"
            )
        return None

    def argv(
        self, workdir: Path, command: list[str], *, tmp_bytes: int, network: bool, rlimits: str
    ) -> list[str]:
        namespaces = ["--pid", "--fork", "--kill-child", "--mount", "--ipc", "--uts"]
        if not network:
            namespaces.append("--net")
        if not self.as_root:
            namespaces = ["--user", "--map-root-user", *namespaces]
        newroot = Path(tempfile.gettempdir()) / "mlops-box-root"
        newroot.mkdir(exist_ok=True)
        return [
            "setpriv",
            "--pdeathsig",
            "KILL",
            "--",
            "unshare",
            *namespaces,
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            str(BOX_INIT),
            str(newroot),
            str(workdir),
            str(tmp_bytes),
            "1" if network else "0",
            "user" if self.as_root else "caps",
            rlimits,
            "--",
            *SYSTEM_DIRS,
            *python_dirs(),
            "--",
            *command,
        ]

    def give(self, workdir: Path) -> None:
        """The box's user owns its work directory (as root: nobody; else: already ours)."""
        if not self.as_root:
            return
        for root, dirs, files in os.walk(workdir):
            for name in (*dirs, *files):
                with contextlib.suppress(FileNotFoundError):
                    os.lchown(os.path.join(root, name), BOX_UID, BOX_UID)
        os.chown(workdir, BOX_UID, BOX_UID)

    async def run(self, job: BoxJob, on_line: LineSink, cancelled: CancelCheck) -> BoxOutcome:
        reason = self.unavailable_reason()
        if reason:
            raise SandboxUnavailable(reason)
        limits = job.limits
        rlimits = " ".join(
            [
                f"--as={limits.memory_bytes}",
                f"--nproc={limits.processes}",
                f"--fsize={limits.file_size_bytes}",
                "--core=0",
                "--nofile=4096",
            ]
        )
        await asyncio.to_thread(self.give, job.workdir)
        python = str(Path(sys.prefix) / "bin" / "python")
        argv = self.argv(
            job.workdir,
            [python, "-m", job.module, *job.args],
            tmp_bytes=limits.tmp_bytes,
            network=job.network,
            rlimits=rlimits,
        )
        # NOTE: killing `unshare`'s process group kills the box's PID 1, and with it every
        # process in the box.
        return await run_process(
            argv,
            env=job.env,
            cwd=None,
            wall_time_s=limits.wall_time_s,
            on_line=on_line,
            cancelled=cancelled,
        )
