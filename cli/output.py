"""How answers are shown: the server's JSON as is (`-o json`), or rich tables (`-o table`)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

PIPED_WIDTH = 200
"""Columns for a table written to a pipe or file: rich's 80 would fold ids and paths."""

console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else PIPED_WIDTH)


def print_json(value: Any) -> None:
    # NOTE: plain print, not rich: the output is for programs (jq), with no markup or wrapping.
    print(json.dumps(value, indent=2))


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    shown = Table(title=title, title_justify="left")
    for column in columns:
        # NOTE: ids are copied into the next command: never folded.
        shown.add_column(column, overflow="fold", no_wrap=column == "id")
    for row in rows:
        shown.add_row(*(cell(v) for v in row))
    console.print(shown)


def fields(title: str, record: dict[str, Any], keys: Sequence[str]) -> None:
    """One record as a two-column table of the named fields."""
    table(title, ["field", "value"], [(k, record.get(k)) for k in keys])
