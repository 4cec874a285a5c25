"""The executed notebook the platform keeps: outputs capped head and tail, the whole notebook
bounded, and whatever pushed code wrote at its path read as data, never trusted."""

from __future__ import annotations

import json
import os
import time
import tracemalloc
from pathlib import Path

import nbformat
import pytest

from pipeline_worker.notebook_outputs import MAX_FILE_BYTES, cap_outputs
from tests.pipeline_worker.support import EXAMPLE_NOTEBOOK


def write_notebook(path: Path, cells: list[nbformat.NotebookNode]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = cells
    nbformat.write(nb, path)
    return path


def code(source: str, *outputs: nbformat.NotebookNode) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source, execution_count=1)
    cell.outputs = list(outputs)
    return cell


def stream(text: str, name: str = "stdout") -> nbformat.NotebookNode:
    return nbformat.v4.new_output("stream", name=name, text=text)


def read(path: Path) -> nbformat.NotebookNode:
    """The rewritten file, which must be a valid nbformat 4 notebook."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return nb


def only_text(nb: nbformat.NotebookNode) -> str:
    return nb.cells[0].source


def test_a_notebook_within_bounds_keeps_everything(tmp_path: Path):
    picture = "iVBORw0KGgo" * 1_000
    path = write_notebook(
        tmp_path / "run.ipynb",
        [
            nbformat.v4.new_markdown_cell("# Training"),
            code("print('hi')", stream("hi\n")),
            code(
                "model",
                nbformat.v4.new_output(
                    "execute_result",
                    {"text/plain": "Tree()", "image/png": picture},
                    execution_count=3,
                ),
            ),
            code("1/0", nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="x")),
        ],
    )
    before = nbformat.read(path, as_version=4)
    assert cap_outputs(path, 1_000, 100_000) == 0
    after = read(path)
    assert [c.source for c in after.cells] == [c.source for c in before.cells]
    assert [c.get("outputs") for c in after.cells] == [c.get("outputs") for c in before.cells]
    assert after.metadata["kernelspec"]["name"] == "python3"


def test_the_example_notebook_passes_through(tmp_path: Path):
    path = tmp_path / "example.ipynb"
    path.write_bytes(EXAMPLE_NOTEBOOK.read_bytes())
    assert cap_outputs(path) == 0
    after = read(path)
    before = nbformat.read(EXAMPLE_NOTEBOOK, as_version=4)
    assert [c.source for c in after.cells] == [c.source for c in before.cells]
    assert [c.metadata.get("tags") for c in after.cells] == [
        c.metadata.get("tags") for c in before.cells
    ]


def test_a_huge_stream_keeps_its_head_and_tail(tmp_path: Path):
    printed = "".join(f"line {i}\n" for i in range(200_000))
    path = write_notebook(tmp_path / "run.ipynb", [code("bomb()", stream(printed))])
    dropped = cap_outputs(path, 3_000, 100_000)
    text = read(path).cells[0].outputs[0].text
    assert dropped == len(printed) - 3_000
    assert text.startswith("line 0\nline 1\n") and text.endswith("line 199999\n")
    assert f"[mlops: {dropped:,} characters of output were dropped here]" in text
    assert len(text) < 3_100


def test_huge_text_results_errors_and_images_are_bounded(tmp_path: Path):
    path = write_notebook(
        tmp_path / "run.ipynb",
        [
            code(
                "df",
                nbformat.v4.new_output(
                    "display_data", {"text/plain": "x" * 50_000, "image/png": "A" * 60_000}
                ),
            ),
            code(
                "fail()",
                nbformat.v4.new_output(
                    "error",
                    ename="ValueError",
                    evalue="v" * 50_000,
                    traceback=[f"frame {i}" for i in range(20_000)],
                ),
            ),
        ],
    )
    cap_outputs(path, 2_000, 40_000)
    shown, error = (cell.outputs[0] for cell in read(path).cells)
    assert "image/png" not in shown.data
    assert (
        "[mlops: dropped for its size: image/png (60,002 characters)]" in shown.data["text/plain"]
    )
    assert len(shown.data["text/plain"]) < 2_200
    assert len(error.evalue) < 2_100 and error.traceback[-1] == "frame 19999"
    assert len("\n".join(error.traceback)) < 2_100
    assert path.stat().st_size < 40_000


def test_a_notebook_of_many_outputs_keeps_its_first_and_last_cells(tmp_path: Path):
    cells = [code(f"step({i})", stream(f"step {i}: " + "." * 900 + "\n")) for i in range(1_000)]
    path = write_notebook(tmp_path / "run.ipynb", cells)
    size_before = path.stat().st_size
    dropped = cap_outputs(path, 2_000, 60_000)
    nb = read(path)
    assert size_before > 1_000_000 and path.stat().st_size < 70_000
    assert dropped > 900_000
    sources = [c.source for c in nb.cells]
    assert sources[0] == "step(0)" and sources[-1] == "step(999)"
    assert nb.cells[-1].outputs[0].text.startswith("step 999: ")
    notes = [c for c in nb.cells if c.cell_type == "markdown"]
    assert len(notes) == 1 and "were dropped here" in notes[0].source
    # The note sits where the cells were dropped: between the head and the tail.
    at = nb.cells.index(notes[0])
    assert int(sources[at + 1][5:-1]) > int(sources[at - 1][5:-1]) + 1
    # Many tiny cells cannot slip past the total either.
    empty = tmp_path / "empty.ipynb"
    cell = {"cell_type": "code", "metadata": {}, "source": "", "outputs": []}
    empty.write_text(json.dumps({"nbformat": 4, "metadata": {}, "cells": [cell] * 20_000}))
    cap_outputs(empty, 2_000, 60_000)
    assert empty.stat().st_size < 80_000


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "it is not valid JSON"),
        (b"\xff\xfe\x00garbage", "it is not valid JSON"),
        (b"[1, 2, 3]", "it is not a notebook"),
        (b'"just a string"', "it is not a notebook"),
        (b"42", "it is not a notebook"),
        (b'{"cells": {"a": 1}}', "it is not a notebook"),
        (b'{"cells": [], "metadata": {"x": NaN}}', "it is not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "it is not valid JSON"),
        (b"[]," * 2_100_000, "JSON arrays and objects"),
        (b"", "it is not valid JSON"),
    ],
)
def test_an_unreadable_file_becomes_a_small_notebook_that_says_why(
    tmp_path: Path, content: bytes, reason: str
):
    path = tmp_path / "run.ipynb"
    path.write_bytes(content)
    assert cap_outputs(path) == len(content)
    assert reason in only_text(read(path))
    assert path.stat().st_size < 1_000


def test_hostile_fields_are_rebuilt_not_trusted(tmp_path: Path):
    path = tmp_path / "run.ipynb"
    notebook = {
        "nbformat": 4,
        "nbformat_minor": 4,
        "metadata": {"huge": "m" * 50_000},
        "cells": [
            "not a cell",
            {"cell_type": "evil", "source": "x"},
            {
                "cell_type": "code",
                "id": "same",
                "source": ["print(", "1)"],
                "execution_count": True,
                "metadata": {"tags": ["mlops:training"], "blob": "b" * 50_000},
                "outputs": [
                    {"output_type": "stream", "name": "/etc/passwd", "text": 5},
                    {"output_type": "stream", "name": "stderr", "text": ["a\n", "b\n"]},
                    {"output_type": "execute_result", "data": [1], "execution_count": "1"},
                    {
                        "output_type": "display_data",
                        "data": {"image/png": {"not": "base64"}, "application/json": {"a": [1]}},
                    },
                    {"output_type": "unknown", "payload": "p" * 1_000},
                    7,
                ],
                "extra": "dropped",
            },
            {"cell_type": "markdown", "id": "same", "source": None, "attachments": {"a": 1}},
            {"cell_type": "code", "source": "x", "outputs": "not a list"},
        ],
    }
    path.write_text(json.dumps(notebook))
    assert cap_outputs(path, 1_000, 100_000) > 100_000
    nb = read(path)
    training, markdown, last = nb.cells
    assert nb.metadata == {}
    assert training.source == "print(1)" and training.execution_count is None
    assert training.metadata == {"tags": ["mlops:training"]}
    assert "extra" not in training
    assert training.outputs[0] == {"output_type": "stream", "name": "stderr", "text": "a\nb\n"}
    assert training.outputs[1].data == {
        "text/plain": "[mlops: this output was not a valid mime bundle]"
    }
    assert training.outputs[2].data == {"application/json": {"a": [1]}}
    assert len(training.outputs) == 3
    assert markdown.source == "" and "attachments" not in markdown
    assert markdown.id != training.id
    assert last.outputs == []


def test_a_200_mb_file_is_refused_by_its_size_without_reading_it(tmp_path: Path):
    path = tmp_path / "run.ipynb"
    with path.open("wb") as file:
        file.truncate(200 * 1024 * 1024)  # sparse: costs no disk
    tracemalloc.start()
    try:
        started = time.monotonic()
        dropped = cap_outputs(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert dropped == 200 * 1024 * 1024
    assert peak < 1024 * 1024 and time.monotonic() - started < 2
    assert f"more than the {MAX_FILE_BYTES:,} the platform reads" in only_text(read(path))


def test_links_fifos_and_directories_are_replaced_not_followed(tmp_path: Path):
    secret = tmp_path / "webhook_secret"
    secret.write_text("whsec-do-not-leak")
    link = tmp_path / "link.ipynb"
    link.symlink_to(secret)
    cap_outputs(link)
    assert not link.is_symlink()
    assert "not a regular file" in only_text(read(link))
    assert "whsec" not in link.read_text() and secret.read_text() == "whsec-do-not-leak"

    fifo = tmp_path / "fifo.ipynb"
    os.mkfifo(fifo)
    cap_outputs(fifo)  # returns at once: nothing is waited for
    assert "not a regular file" in only_text(read(fifo))

    folder = tmp_path / "folder.ipynb"
    (folder / "inner").mkdir(parents=True)
    cap_outputs(folder)
    assert "not a regular file" in only_text(read(folder))

    missing = tmp_path / "missing.ipynb"
    assert cap_outputs(missing) == 0
    assert "was not written" in only_text(read(missing))
