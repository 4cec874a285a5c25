"""Every program's output on the launcher's stdout, one `HH:MM:SS name | line` at a time.

NOTE: supervisord writes each program's output to its own log file, which it rotates; we follow
those files rather than point supervisord at /dev/stdout, which would lose the program's name
on every line (supervisord has no prefix option) and keep nothing on disk to look back at.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import IO

SUPERVISORD_DATE = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
"""supervisord's own date on its log lines; the console adds the time already."""
MAX_LINE_BYTES = 64 * 1024
"""A longer run without a line break (a progress bar redrawn with \\r) is printed in pieces."""


class Console:
    """The launcher's stdout, shared by threads: lines never interleave."""

    def __init__(self, names: list[str], stream: IO[str] | None = None) -> None:
        self.width = max(len(name) for name in names)
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()

    def say(self, name: str, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        prefix = f"{stamp} {name:<{self.width}} | "
        with self.lock:
            for line in text.splitlines() or [""]:
                self.stream.write(prefix + line + "\n")
            self.stream.flush()


class FollowedLog:
    """One log file read as it grows, from where it ended when we started; across rotations
    (supervisord renames NAME.log to NAME.log.1 and opens a new NAME.log)."""

    def __init__(self, path: Path, strip: re.Pattern[bytes] | None = None) -> None:
        self.path = path
        self.strip = strip
        """Removed from the start of every line (supervisord's own date)."""
        self.file: IO[bytes] | None = None
        self.partial = b""
        self._open(at_end=True)

    def _open(self, at_end: bool) -> None:
        try:
            self.file = open(self.path, "rb")  # noqa: SIM115 - kept open between reads
        except FileNotFoundError:
            return
        if at_end:
            self.file.seek(0, os.SEEK_END)

    def _replaced(self) -> bool:
        assert self.file is not None
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False  # renamed; the new file is not there yet
        if now.st_ino != os.fstat(self.file.fileno()).st_ino:
            return True
        if now.st_size < self.file.tell():  # truncated in place (supervisorctl clear)
            self.file.seek(0)
        return False

    def lines(self, final: bool = False) -> list[str]:
        """The complete lines written since the last call; with `final`, the unfinished one too."""
        if self.file is None:
            self._open(at_end=False)  # created after we started: all of it is new
            if self.file is None:
                return []
        data = self.file.read()
        if self._replaced():
            self.file.close()
            self._open(at_end=False)
            data += self.file.read() if self.file is not None else b""
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if final or len(self.partial) > MAX_LINE_BYTES:
            if self.partial:
                lines.append(self.partial)
            self.partial = b""
        if self.strip is not None:
            lines = [self.strip.sub(b"", line, count=1) for line in lines]
        return [line.rstrip(b"\r").decode(errors="replace") for line in lines]

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class LogTail:
    """Prints what each program writes to its log file, prefixed with the program's name."""

    def __init__(self, logs: dict[str, FollowedLog], console: Console) -> None:
        # NOTE: made before supervisord starts, so a line written at once is not missed and a
        # previous run's lines are not printed again.
        self.logs = logs
        self.console = console

    def poll(self, final: bool = False) -> None:
        for name, log in self.logs.items():
            for line in log.lines(final):
                self.console.say(name, line)

    def follow(self, stop: threading.Event, interval_s: float = 0.2) -> None:
        """Until `stop` is set, then once more to the end of every file."""
        while not stop.wait(interval_s):
            self.poll()
        self.poll(final=True)
        for log in self.logs.values():
            log.close()
