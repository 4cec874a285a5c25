"""The native load clients (h2load, wrk): found on PATH, or installed from Debian when we can.

CI machines start clean, so a benchmark run installs what it lacks (as root, with apt-get);
`make test` never does.
"""

from __future__ import annotations

import os
import shutil
import subprocess

DEBIAN_PACKAGES = {"h2load": "nghttp2-client", "wrk": "wrk"}


class ToolMissing(RuntimeError):
    pass


def ensure_tools(*names: str) -> dict[str, str]:
    """The path of each tool, installing the missing ones' Debian packages when root."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        packages = sorted({DEBIAN_PACKAGES[name] for name in missing})
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise ToolMissing(
                f"{', '.join(missing)} not found; install them with "
                f"`sudo apt-get install -y {' '.join(packages)}` (Debian/Ubuntu) and run again"
            )
        print(f"installing {' '.join(packages)} with apt-get", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
        if subprocess.run(install, env=env, check=False).returncode != 0:
            # NOTE: a fresh machine has no package lists yet; update once, then retry.
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
            subprocess.run(install, env=env, check=True)
    paths = {name: shutil.which(name) for name in names}
    if None in paths.values():
        raise ToolMissing(f"still missing after install: {paths}")
    return {name: str(path) for name, path in paths.items()}
