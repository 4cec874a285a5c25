"""Process trees from /proc: which processes a command started, which is which (by its
command line), and whether any is left."""

from __future__ import annotations

import os
from pathlib import Path


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a live process, None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name in parentheses may hold spaces: split after its closing bracket.
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0], int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every process below `root` (children, grandchildren...), as {pid: start time}."""
    parents: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            parents.setdefault(stat[0], []).append(int(entry))
            starts[int(entry)] = stat[2]
    found: dict[int, int] = {}
    frontier = [root]
    while frontier:
        for child in parents.get(frontier.pop(), []):
            found[child] = starts[child]
            frontier.append(child)
    return found


def survivors(processes: dict[int, int]) -> list[int]:
    """The processes (by {pid: start time}) still running; zombies and reused PIDs are gone."""
    left = []
    for pid, start in processes.items():
        stat = _stat(pid)
        if stat is not None and stat[2] == start and stat[1] != "Z":
            left.append(pid)
    return left


def command_line(pid: int) -> list[str]:
    """A live process's argv; [] once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def find(root: int, *words: str) -> list[int]:
    """The processes below `root` whose argv holds every one of `words`, in order of PID."""
    return sorted(
        pid for pid in descendants(root) if all(word in command_line(pid) for word in words)
    )
