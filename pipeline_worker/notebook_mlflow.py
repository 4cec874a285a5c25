"""The notebook's own MLflow calls, without MLflow's address or credentials in the box.

Before the kernel starts, the worker creates a run in a file store inside the box directory
and points the kernel at it (`MLFLOW_TRACKING_URI=file:...`, `MLFLOW_RUN_ID`), so
`mlflow.log_metric`, `log_param` and `set_tag` work unchanged. After the box ended, the worker
reads that store as plain files (no link followed, every count and size bounded) and copies
the params, metrics and tags into the pipeline's real run. Tags of MLflow and of the platform
(`mlflow.*`, `mlops.*`) are not the notebook's to set and are left out.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

# NOTE: MLflow 3 keeps the file store only behind this switch; the box needs no server.
FILE_STORE_SWITCH = {"MLFLOW_ALLOW_FILE_STORE": "true"}
EXPERIMENT_ID = "0"
MAX_ENTRIES = 1000
MAX_METRIC_POINTS = 50_000
MAX_FILE_BYTES = 1024 * 1024
RESERVED_TAG_PREFIXES = ("mlflow.", "mlops.")
# MLflow's own batch limits per log_batch call.
BATCH = {"params": 100, "tags": 100, "metrics": 1000}


def create_run(store: Path) -> str:
    """A run in a new file store at `store`; returns its id."""
    os.environ.update(FILE_STORE_SWITCH)
    client = MlflowClient(tracking_uri=store.as_uri())
    return str(client.create_run(EXPERIMENT_ID).info.run_id)


@dataclass
class NotebookRecord:
    params: list[Param] = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)
    tags: list[RunTag] = field(default_factory=list)
    skipped: int = 0
    """Entries not copied: malformed, too many, too large, links or reserved tags."""


def read_run(store: Path, run_id: str) -> NotebookRecord:
    """What the notebook logged to its run, read as data."""
    record = NotebookRecord()
    run_dir = store / EXPERIMENT_ID / run_id
    for key, text in _entries(run_dir / "params", record):
        record.params.append(Param(key, text[:6000]))
    for key, text in _entries(run_dir / "tags", record):
        if key.startswith(RESERVED_TAG_PREFIXES):
            record.skipped += 1
            continue
        record.tags.append(RunTag(key, text[:8000]))
    for key, text in _entries(run_dir / "metrics", record):
        for line in text.splitlines():
            if len(record.metrics) >= MAX_METRIC_POINTS:
                record.skipped += 1
                break
            try:
                ts, value, step = line.split()
                record.metrics.append(Metric(key, float(value), int(ts), int(step)))
            except ValueError:
                record.skipped += 1
    return record


def _entries(folder: Path, record: NotebookRecord) -> list[tuple[str, str]]:
    """(key, file text) for the files under `folder`; keys may hold '/' (nested folders)."""
    found: list[tuple[str, str]] = []
    if not folder.is_dir() or folder.is_symlink():
        return found
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not Path(root, d).is_symlink()]
        for name in files:
            path = Path(root, name)
            mode = os.lstat(path).st_mode
            if len(found) >= MAX_ENTRIES or not stat.S_ISREG(mode):
                record.skipped += 1
                continue
            with open(path, "rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
            if len(data) > MAX_FILE_BYTES:
                record.skipped += 1
                continue
            found.append((path.relative_to(folder).as_posix(), data.decode("utf-8", "replace")))
    return found


def copy_to(client: MlflowClient, run_id: str, record: NotebookRecord) -> None:
    """Log the notebook's entries into the pipeline's run, in MLflow-sized batches. Params
    the run already has (the platform's own) are kept: MLflow refuses to change a param."""
    existing = client.get_run(run_id).data.params
    record.params = [p for p in record.params if p.key not in existing]
    for kind, size in BATCH.items():
        items = getattr(record, kind)
        for start in range(0, len(items), size):
            client.log_batch(run_id, **{kind: items[start : start + size]})
