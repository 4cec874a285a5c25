"""End-to-end fixtures: platforms started by the test and always stopped (by PID) afterwards,
and the timings the test measures, written to `last_timings.json` and shown in the summary."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.end_to_end.stack import Stack

StackFactory = Callable[[str, dict[str, str]], Stack]
TIMINGS_FILE = Path(__file__).with_name("last_timings.json")
_TIMINGS = pytest.StashKey[dict[str, float]]()


@pytest.fixture
def new_stack(tmp_path: Path) -> Iterator[StackFactory]:
    """Makes (unstarted) stacks; whatever a failing test leaves running is ended."""
    made: list[Stack] = []

    def make(name: str, env: dict[str, str]) -> Stack:
        stack = Stack(name, tmp_path, env)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.cleanup()


@pytest.fixture
def timings(request: pytest.FixtureRequest) -> Iterator[dict[str, float]]:
    """Seconds measured by the test, by name; kept even when the test fails half way."""
    measured: dict[str, float] = {}
    yield measured
    if measured:
        # NOTE: several tests measure; the summary and the file keep them all.
        merged = {**request.config.stash.get(_TIMINGS, {}), **measured}
        TIMINGS_FILE.write_text(json.dumps(merged, indent=2) + "\n")
        request.config.stash[_TIMINGS] = merged


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    measured = config.stash.get(_TIMINGS, None)
    if measured:
        terminalreporter.section("end-to-end timings (seconds; load_requests a count)")
        for name, value in measured.items():
            terminalreporter.write_line(f"{name:<36} {value:8.2f}")
        terminalreporter.write_line(f"(also in {TIMINGS_FILE})")
