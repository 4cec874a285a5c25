"""The installed distribution is the product: the services, their shared package and the `mlops`
command line, with the files they read at run time, and none of the development tools
(benchmarks, tests)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from benchmarks.processes import REPO_ROOT, VENV_BIN

PRODUCT = {"cli", "gateway", "inference", "launcher", "mlops_core", "pipeline_worker"}


def checkout_copy(target: Path) -> Path:
    """The checkout's files (tracked, or new and not ignored), without build leftovers a
    previous build may have left beside them."""
    listed = subprocess.run(
        [
            "git",
            "-C",
            str(REPO_ROOT),
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ],
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def test_the_wheel_holds_the_services_their_shared_package_and_the_cli_only(tmp_path: Path) -> None:
    source = checkout_copy(tmp_path / "source")
    assert (source / "benchmarks").is_dir() and (source / "tests").is_dir()
    # NOTE: no build isolation: setuptools comes from the lock, so this builds offline.
    subprocess.run(
        [
            str(VENV_BIN / "uv"),
            *("build", "--wheel", "--no-build-isolation", "--quiet"),
            *("--python", sys.executable, "--out-dir", str(tmp_path / "dist"), str(source)),
        ],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert top_level == PRODUCT
    assert "pipeline_worker/sandbox/box_init.sh" in names, "the local sandbox's init script"
    for name in ("index.html", "dashboard.js", "dashboard.css"):
        assert f"gateway/dashboard/static/{name}" in names, "the dashboard's files"
    assert "mlops_core/protocol/open_inference_pb2.pyi" in names, "the generated stubs' types"
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "mlops = cli.__main__:main" in scripts, "the `mlops` console script"
