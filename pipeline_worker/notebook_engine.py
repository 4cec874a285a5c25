"""A papermill engine that reports each cell's start, outputs and end as they happen.

Papermill's own engine only logs outputs to a Python logger. This one subclasses its nbclient
client, so parameter injection, output saving after every cell and `PapermillExecutionError`
stay papermill's, and adds two things: events for the live log, and a kernel started before
the notebook was known (`kernel_manager`, see `pipeline_worker.boxed.notebook`), which the
client uses as it is and leaves running. It runs inside the box; ending the box ends the
kernel and all it started.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, papermill_engines

ENGINE_NAME = "mlops-streaming"
INJECTED_TAG = "injected-parameters"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

CellEventSink = Callable[[dict[str, Any]], None]
"""Receives `{"kind": "start"|"output"|"end", "index", "tag", ...}`; called from the
execution thread, so it must be thread-safe."""


def cell_label(cell: Any) -> str:
    tags = cell.get("metadata", {}).get("tags", [])
    ours = [t for t in tags if t.startswith("mlops:") or t in ("parameters", INJECTED_TAG)]
    return ", ".join(ours) if ours else "untagged"


def output_text(output: Any) -> str:
    """The text a person would read for one output."""
    kind = output.get("output_type")
    if kind == "stream":
        return "".join(output.get("text", ""))
    if kind == "error":
        return ANSI.sub("", "\n".join(output.get("traceback", [])))
    data = output.get("data", {})
    if "text/plain" in data:
        return "".join(data["text/plain"])
    return f"<{', '.join(sorted(data)) or kind}>"


class StreamingNotebookClient(PapermillNotebookClient):
    def __init__(
        self,
        nb_man: Any,
        *,
        sink: CellEventSink,
        **kw: Any,
    ) -> None:
        super().__init__(nb_man, **kw)
        self._sink = sink
        self._current: dict[str, Any] = {}
        self.on_cell_start = self._cell_started
        self.on_cell_executed = self._cell_executed

    def _position(self, cell: Any, cell_index: int) -> dict[str, Any]:
        """The cell's index in the user's notebook (the injected parameters cell not counted)."""
        if INJECTED_TAG in cell.get("metadata", {}).get("tags", []):
            return {"index": "-", "tag": INJECTED_TAG}
        injected = sum(
            INJECTED_TAG in c.get("metadata", {}).get("tags", [])
            for c in self.nb.cells[:cell_index]
        )
        return {"index": cell_index - injected, "tag": cell_label(cell)}

    def _cell_started(self, cell: Any, cell_index: int) -> None:
        if cell.cell_type != "code" or not cell.source.strip():
            return
        self._current = self._position(cell, cell_index)
        self._sink({"kind": "start", **self._current})

    def _cell_executed(self, cell: Any, cell_index: int, execute_reply: Any) -> None:
        content = (execute_reply or {}).get("content", {})
        self._sink(
            {
                "kind": "end",
                **self._position(cell, cell_index),
                "status": content.get("status", "unknown"),
                "ename": content.get("ename"),
                "evalue": content.get("evalue"),
            }
        )

    def process_message(self, *args: Any, **kwargs: Any) -> Any:
        output = super().process_message(*args, **kwargs)
        if output:
            self._sink({"kind": "output", **self._current, "text": output_text(output)})
        return output


class StreamingEngine(NBClientEngine):
    @classmethod
    def execute_managed_notebook(
        cls,
        nb_man: Any,
        kernel_name: str,
        log_output: bool = False,
        stdout_file: Any = None,
        stderr_file: Any = None,
        start_timeout: float = 60,
        execution_timeout: float | None = None,
        *,
        sink: CellEventSink,
        kernel_manager: Any,
        **kwargs: Any,
    ) -> Any:
        kwargs.pop("input_path", None)
        client = StreamingNotebookClient(
            nb_man,
            km=kernel_manager,
            sink=sink,
            timeout=execution_timeout,
            startup_timeout=start_timeout,
            kernel_name=kernel_name,
            log_output=False,
        )
        return client.execute()


papermill_engines.register(ENGINE_NAME, StreamingEngine)
