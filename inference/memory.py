"""How much memory a model version takes: measured around its load, for the memory budget.

NOTE: a version's size is the growth of the C heap in use (glibc's `mallinfo2`: bytes handed
out by malloc, mmapped blocks included) across its session's creation and warm-up, floored
by the growth of the process's resident set and by the ONNX file's size. The heap figure is
the one that attributes: freed memory that a later load reuses does not grow the resident
set again (an iris LR model measured 4 KiB of RSS but 1.1 MiB of heap), and onnxruntime
reserves its buffers with malloc. Loads are serialized (`ModelRepository`) so each delta
belongs to one version; requests served meanwhile add a little noise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function = libc.mallinfo2  # glibc 2.33 and later
    except (OSError, AttributeError):
        log.info("no mallinfo2 (not glibc 2.33+): model sizes are resident-set growth only")
        return None
    function.restype = _MallInfo2
    function.argtypes = []
    return function


_MALLINFO2 = _mallinfo2()


def rss_bytes() -> int:
    """The process's resident set now (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def heap_bytes() -> int:
    """Bytes malloc has handed out and not taken back (0 without mallinfo2)."""
    if _MALLINFO2 is None:
        return 0
    info = _MALLINFO2()
    return int(info.uordblks + info.hblkhd)


@dataclass(frozen=True)
class MemorySnapshot:
    rss: int
    heap: int

    @staticmethod
    def take() -> MemorySnapshot:
        return MemorySnapshot(rss_bytes(), heap_bytes())

    def growth_since(self, before: MemorySnapshot, floor: int) -> int:
        """Bytes this process grew by since `before`: the larger measure, at least `floor`."""
        return max(self.heap - before.heap, self.rss - before.rss, floor)
