"""A pipeline's box directory as the worker sees it: laid out before a box runs, read back
after it ended, without ever following a link the boxed code may have planted.

Layout (host `<workroot>/boxes/<box id>`, `/pipeline` inside the local box):
`repo/` the commit without `.git`; `output/` what the notebook exports; `mlruns/` the
notebook's own MLflow store; `executed.ipynb`; `onnx/` what conversion writes; `job.json`
what the worker hands the box once its pipeline is known (see `pipeline_box`).

NOTE: a box may start before its pipeline is known (a warm box), so the directory is made
empty first (`make_box_dir`) and the checkout laid into it later (`lay_out`): the directory
itself must stay the same one, since the running box has it mounted.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class BoxDir:
    host: Path
    inside: PurePosixPath
    """The same directory as boxed code sees it."""

    def at(self, *parts: str) -> str:
        """A path inside the box, for arguments and injected parameters."""
        return str(self.inside.joinpath(*parts))

    def host_path(self, *parts: str) -> Path:
        return self.host.joinpath(*parts)


def make_box_dir(box: BoxDir) -> None:
    """A fresh, empty box directory with the folders the stages write to."""
    shutil.rmtree(box.host, ignore_errors=True)
    box.host.mkdir(parents=True)
    for name in ("output", "onnx"):
        (box.host / name).mkdir()


def lay_out(box: BoxDir, checkout: Path) -> None:
    """Copy the checkout into the box directory as `repo/` (no `.git`: no remote URL or
    credential helper configuration reaches the box)."""
    shutil.copytree(checkout, box.host / "repo", symlinks=True, ignore=_git_dirs)


def _git_dirs(_directory: str, names: list[str]) -> set[str]:
    return {".git"} & set(names)


class UnsafeFile(Exception):
    """A box output that is a link, not a regular file, or too large."""


def regular_file(box: BoxDir, relative: str) -> Path | None:
    """The host path of `relative` in the box if it is a regular file reached through no
    link; None if it is absent. Raises UnsafeFile for anything else."""
    path = box.host
    for part in PurePosixPath(relative).parts:
        if part in ("..", "/"):
            raise UnsafeFile(f"{relative} leaves the box")
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(mode):
            raise UnsafeFile(f"{relative} is a symbolic link")
    if not stat.S_ISREG(mode):
        raise UnsafeFile(f"{relative} is not a regular file")
    return path


def has_file(box: BoxDir, relative: str) -> bool:
    """Whether the box left a regular file, reached through no link, at `relative`."""
    try:
        return regular_file(box, relative) is not None
    except UnsafeFile:
        return False


def harvest(box: BoxDir, relative: str, dest: Path, max_bytes: int) -> Path | None:
    """Copy a file the box left at `relative` to `dest` (outside the box); None if absent."""
    path = regular_file(box, relative)
    if path is None:
        return None
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as source:
        if os.fstat(source.fileno()).st_size > max_bytes:
            raise UnsafeFile(f"{relative} is larger than {max_bytes} bytes")
        data = source.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnsafeFile(f"{relative} is larger than {max_bytes} bytes")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return dest
