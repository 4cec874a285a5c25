"""Bounding the executed notebook the platform keeps: each output keeps its head and tail, the
whole notebook keeps its first and last cells, and a file pushed code wrote is read as data.

Pushed code may write anything at the executed notebook's path: a huge file, invalid JSON, a
JSON bomb, a symlink to a platform file, a FIFO. The file is opened without following links,
read only if it is a regular file under a size cap, parsed as JSON only, and rebuilt from the
fields of nbformat 4.5 the platform knows. Anything it cannot read becomes a small valid
notebook that says why.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_CHARS_PER_OUTPUT = 100_000
MAX_TOTAL_CHARS = 5_000_000
# A read cap well above any real notebook (plots included), and a cap on JSON containers:
# each costs ~60 bytes of memory for 2 bytes of file, so a bomb of them would not fit.
MAX_FILE_BYTES = 32 * 1024 * 1024
MAX_JSON_CONTAINERS = 2_000_000
# Metadata and rich outputs (images, HTML, JSON) cannot be cut; past these they are dropped.
MAX_METADATA_CHARS = 10_000
RICH_OUTPUT_SHARE = 4
"""A single image or other rich output may take at most this fraction of the total."""
# Of what is kept of a text or of the notebook, the head gets a third; the end (where errors
# and results are) the rest.
HEAD_SHARE = 3

NOTE = "**[mlops]**"
_CELL_ID = re.compile(r"^[a-zA-Z0-9-_]{1,64}$")
_TEXT_MIME = re.compile(r"^text/")
_JSON_MIME = re.compile(r"^application/(.*\+)?json$")


@dataclass
class _Capper:
    max_chars_per_output: int
    max_total_chars: int
    dropped: int = 0
    ids: set[str] = field(default_factory=set)

    def text(self, value: Any, limit: int | None = None) -> str | None:
        """A string (or nbformat's list of strings) cut to its head and tail; None if neither."""
        if isinstance(value, list) and all(isinstance(part, str) for part in value):
            value = "".join(value)
        if not isinstance(value, str):
            if value is not None:
                self.dropped += _size(value)
            return None
        limit = self.max_chars_per_output if limit is None else limit
        if len(value) <= limit:
            return value
        head = limit // HEAD_SHARE
        tail = limit - head
        cut = len(value) - head - tail
        self.dropped += cut
        return (
            f"{value[:head]}\n[mlops: {cut:,} characters of output were dropped here]\n"
            f"{value[len(value) - tail :]}"
        )

    def metadata(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.dropped += _size(value)
            return {}
        size = _size(value)
        if size <= MAX_METADATA_CHARS:
            return value
        self.dropped += size
        tags = value.get("tags")
        if isinstance(tags, list) and all(isinstance(t, str) and len(t) < 100 for t in tags):
            return {"tags": tags[:50]}
        return {}

    def cell(self, raw: Any) -> dict[str, Any] | None:
        if not isinstance(raw, dict) or raw.get("cell_type") not in ("code", "markdown", "raw"):
            self.dropped += _size(raw)
            return None
        cell: dict[str, Any] = {
            "cell_type": raw["cell_type"],
            "id": self.cell_id(raw.get("id")),
            "metadata": self.metadata(raw.get("metadata")),
            "source": self.text(raw.get("source")) or "",
        }
        if cell["cell_type"] == "code":
            cell["execution_count"] = _count(raw.get("execution_count"))
            outputs = raw.get("outputs")
            if not isinstance(outputs, list):
                self.dropped += _size(outputs)
                outputs = []
            cell["outputs"] = [out for out in map(self.output, outputs) if out is not None]
        elif raw.get("attachments") is not None:
            self.dropped += _size(raw["attachments"])
        return cell

    def cell_id(self, value: Any) -> str:
        number = len(self.ids)
        while not isinstance(value, str) or not _CELL_ID.match(value) or value in self.ids:
            value, number = f"mlops-{number}", number + 1
        self.ids.add(value)
        return value

    def output(self, raw: Any) -> dict[str, Any] | None:
        kind = raw.get("output_type") if isinstance(raw, dict) else None
        if kind == "stream":
            text = self.text(raw.get("text"))
            name = raw.get("name") if raw.get("name") in ("stdout", "stderr") else "stdout"
            return None if text is None else {"output_type": kind, "name": name, "text": text}
        if kind == "error":
            traceback = raw.get("traceback")
            lines = traceback if isinstance(traceback, list) else []
            text = self.text("\n".join(str(line) for line in lines)) or ""
            return {
                "output_type": kind,
                "ename": self.text(raw.get("ename"), 1_000) or "",
                "evalue": self.text(raw.get("evalue")) or "",
                "traceback": text.split("\n") if text else [],
            }
        if kind in ("execute_result", "display_data"):
            out = {
                "output_type": kind,
                "data": self.bundle(raw.get("data")),
                "metadata": self.metadata(raw.get("metadata")),
            }
            if kind == "execute_result":
                out["execution_count"] = _count(raw.get("execution_count"))
            return out
        self.dropped += _size(raw)
        return None

    def bundle(self, raw: Any) -> dict[str, Any]:
        """A mime bundle: text cut like a stream, other types kept whole or dropped."""
        if not isinstance(raw, dict):
            self.dropped += _size(raw)
            return {"text/plain": "[mlops: this output was not a valid mime bundle]"}
        rich_limit = max(self.max_chars_per_output, self.max_total_chars // RICH_OUTPUT_SHARE)
        data: dict[str, Any] = {}
        dropped_types = []
        for mime, value in raw.items():
            if _TEXT_MIME.match(mime) and mime != "text/html":
                text = self.text(value)
                if text is not None:
                    data[mime] = text
                continue
            size = _size(value)
            if not _JSON_MIME.match(mime) and self.text(value, size) is None:
                continue  # nbformat allows only text under a type that is not JSON
            if size <= rich_limit:
                data[mime] = value
            else:
                self.dropped += size
                dropped_types.append(f"{mime} ({size:,} characters)")
        if dropped_types:
            note = f"[mlops: dropped for its size: {', '.join(dropped_types)}]"
            data["text/plain"] = f"{data.get('text/plain', '')}\n{note}".lstrip("\n")
        return data


def cap_outputs(
    path: Path,
    max_chars_per_output: int = MAX_CHARS_PER_OUTPUT,
    max_total_chars: int = MAX_TOTAL_CHARS,
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> int:
    """Rewrite the notebook at `path` bounded; returns how many characters were dropped (a file
    that could not be read counts its whole size)."""
    try:
        raw, size = _read(path, max_file_bytes)
    except _Unreadable as exc:
        _write(path, _placeholder(str(exc)))
        return exc.size
    try:
        notebook = json.loads(raw, parse_constant=_not_json)
    except (ValueError, RecursionError):
        _write(path, _placeholder("it is not valid JSON"))
        return size
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        _write(path, _placeholder("it is not a notebook (a JSON object with a list of cells)"))
        return size
    capper = _Capper(max_chars_per_output, max_total_chars)
    try:
        cells = [cell for cell in map(capper.cell, notebook["cells"]) if cell is not None]
        kept = {
            "nbformat": 4,
            "nbformat_minor": 5,
            "metadata": capper.metadata(notebook.get("metadata")),
            "cells": _bounded(cells, capper),
        }
    except RecursionError:
        _write(path, _placeholder("it is nested too deeply"))
        return size
    _write(path, kept)
    return capper.dropped


def _bounded(cells: list[dict[str, Any]], capper: _Capper) -> list[dict[str, Any]]:
    """The first and last parts of the notebook within the total: each cell's source and each
    output counts what it takes as JSON; what falls between is replaced by notes."""
    pieces: list[tuple[int, int | None, int]] = []  # (cell, output index or None, size)
    for index, cell in enumerate(cells):
        pieces.append((index, None, _size({**cell, "outputs": []})))
        pieces += [(index, i, _size(out)) for i, out in enumerate(cell.get("outputs", []))]
    if sum(size for *_, size in pieces) <= capper.max_total_chars:
        return cells
    head_budget = capper.max_total_chars // HEAD_SHARE
    head = _fitting(pieces, head_budget)
    tail = len(pieces) - _fitting(pieces[head:][::-1], capper.max_total_chars - head_budget)
    kept = {(c, o) for c, o, _ in pieces[:head] + pieces[tail:]}
    # A cell with an output kept keeps its source, so the output is read in its place.
    kept |= {(c, None) for c, _, _ in pieces[tail:]}
    dropped = [size for c, o, size in pieces[head:tail] if (c, o) not in kept]
    capper.dropped += sum(dropped)
    cell_note = {
        "cell_type": "markdown",
        "id": capper.cell_id(None),
        "metadata": {},
        "source": f"{NOTE} {len(dropped):,} cells and outputs of this notebook "
        f"({sum(dropped):,} characters) were dropped here: the platform keeps at most "
        f"{capper.max_total_chars:,}.",
    }
    output_note = {
        "output_type": "stream",
        "name": "stderr",
        "text": f"[mlops: outputs were dropped here: the platform keeps at most "
        f"{capper.max_total_chars:,} characters of a notebook]\n",
    }
    result: list[dict[str, Any]] = []
    for index, cell in enumerate(cells):
        if (index, None) not in kept:
            if not result or result[-1] is not cell_note:
                result.append(cell_note)
            continue
        if cell["cell_type"] == "code":
            outputs: list[dict[str, Any]] = []
            for i, out in enumerate(cell["outputs"]):
                if (index, i) in kept:
                    outputs.append(out)
                elif not outputs or outputs[-1] is not output_note:
                    outputs.append(output_note)
            cell = {**cell, "outputs": outputs}
        result.append(cell)
    return result


def _fitting(pieces: list[tuple[int, int | None, int]], budget: int) -> int:
    """How many of `pieces`, in order, fit in `budget`."""
    used = 0
    for count, (*_, size) in enumerate(pieces):
        used += size
        if used > budget:
            return count
    return len(pieces)


class _Unreadable(Exception):
    def __init__(self, reason: str, size: int = 0) -> None:
        super().__init__(reason)
        self.size = size


def _read(path: Path, max_bytes: int) -> tuple[bytes, int]:
    # NOTE: O_NOFOLLOW so a link the notebook put here is not followed to a platform file;
    # O_NONBLOCK so opening a FIFO does not wait for a writer.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise _Unreadable("the notebook was not written") from None
    except OSError:
        raise _Unreadable("it is not a regular file") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _Unreadable("it is not a regular file")
        if info.st_size > max_bytes:
            raise _Unreadable(_too_large(info.st_size, max_bytes), info.st_size)
        with os.fdopen(os.dup(fd), "rb") as file:
            raw = file.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(raw) > max_bytes:
        raise _Unreadable(_too_large(len(raw), max_bytes), len(raw))
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_CONTAINERS:
        raise _Unreadable(
            f"it holds more than {MAX_JSON_CONTAINERS:,} JSON arrays and objects", len(raw)
        )
    return raw, len(raw)


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _too_large(size: int, limit: int) -> str:
    return f"it is {size:,} bytes, more than the {limit:,} the platform reads"


def _placeholder(reason: str) -> dict[str, Any]:
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [
            {
                "cell_type": "markdown",
                "id": "mlops-unreadable",
                "metadata": {},
                "source": f"{NOTE} The executed notebook could not be kept: {reason}.",
            }
        ],
    }


def _write(path: Path, notebook: dict[str, Any]) -> None:
    """Replace `path` (never writing through a link or into a file someone else holds)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    fd, temp = tempfile.mkstemp(prefix=".capped-", suffix=".ipynb", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            # NOTE: ASCII, so a lone surrogate the notebook wrote as `\ud800` stays escaped.
            json.dump(notebook, file, indent=1)
            file.write("\n")
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _size(value: Any) -> int:
    """What `value` takes as JSON, as the file is written."""
    try:
        return len(json.dumps(value))
    except (TypeError, ValueError, RecursionError):
        return 0


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
