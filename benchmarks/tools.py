"""The native load clients (h2load, wrk): found on PATH, or named with the one command that
installs them.

Nothing installs them unasked: `make bench-deps` runs `install` (Debian/Ubuntu packages, with
apt-get), and a benchmark run that lacks them stops at once with that command.
"""

from __future__ import annotations

import os
import shutil
import subprocess

DEBIAN_PACKAGES = {"h2load": "nghttp2-client", "wrk": "wrk"}
INSTALL_TARGET = "make bench-deps"


class ToolMissing(RuntimeError):
    pass


def apt_install_argv() -> list[str]:
    """What `make bench-deps` runs (through sudo when not root)."""
    packages = sorted(set(DEBIAN_PACKAGES.values()))
    return ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]


def find_tools(*names: str) -> dict[str, str]:
    """The path of each tool; ToolMissing names the command that installs the missing ones."""
    paths = {name: shutil.which(name) for name in names}
    missing = [name for name, path in paths.items() if path is None]
    if missing:
        packages = " ".join(sorted({DEBIAN_PACKAGES[name] for name in missing}))
        raise ToolMissing(
            f"{', '.join(missing)} not found: run `{INSTALL_TARGET}` "
            f"(apt-get install -y {packages}, Debian/Ubuntu)"
        )
    return {name: str(path) for name, path in paths.items()}


def can_install_unattended() -> bool:
    """Whether `install` can run here without asking for a password: root, with apt-get."""
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def install() -> None:
    """Install every tool's Debian package (`make bench-deps`)."""
    if shutil.which("apt-get") is None:
        raise ToolMissing(
            f"no apt-get here: install {', '.join(DEBIAN_PACKAGES)} with this system's packages"
        )
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = [*sudo, *apt_install_argv()]
    print(" ".join(argv), flush=True)
    if subprocess.run(argv, env=env, check=False).returncode != 0:
        # NOTE: a fresh machine has no package lists yet; update once, then retry.
        subprocess.run([*sudo, "apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run(argv, env=env, check=True)
    find_tools(*DEBIAN_PACKAGES)
