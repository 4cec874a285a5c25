"""The command line's parsing as functions: rows from JSON and CSV, the statuses it accepts."""

from __future__ import annotations

import click
import pytest

from cli.commands import STATUSES, csv_rows, json_rows, live_summary
from mlops_core.db import PipelineStatus


def test_the_status_choices_are_the_platforms() -> None:
    assert [s.value for s in PipelineStatus] == STATUSES


def test_rows_from_json_a_list_or_a_request_body() -> None:
    assert json_rows("[[1, 2]]") == json_rows('{"data": [[1, 2]]}') == [[1, 2]]
    with pytest.raises(click.UsageError, match="not JSON"):
        json_rows("[[1, 2]")
    with pytest.raises(click.UsageError, match="list of lists"):
        json_rows('{"rows": []}')


def test_rows_from_csv_skip_a_header_and_blank_lines() -> None:
    assert csv_rows("a,b\n1,2\n\n3.5,4\n") == [[1.0, 2.0], [3.5, 4.0]]
    assert csv_rows("1,2\n") == [[1.0, 2.0]]
    with pytest.raises(click.UsageError, match="line 3 is not numbers"):
        csv_rows("a,b\n1,2\nx,3\n")
    with pytest.raises(click.UsageError, match="no rows"):
        csv_rows("a,b\n")


def test_a_rollouts_live_figures_read_as_lines() -> None:
    live = {
        "step": 0,
        "champion": {"version": "1", "requests": 40, "errors": 0, "p99_ms": 2.5},
        "candidate": {"version": "3", "requests": 5, "errors": 1, "p99_ms": None},
        "agreement": {"compared": 5, "agreed": 4, "share": 0.8},
    }
    assert live_summary(live) == (
        "champion 1: 40 requests, 0 errors, p99 2.5 ms\n"
        "candidate 3: 5 requests, 1 errors, p99 - ms\n"
        "agreement: 4 of 5"
    )
    assert live_summary(None) is None
