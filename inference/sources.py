"""Where a replica gets model versions: its repository directory, or the MLflow registry."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Protocol

from mlops_core.errors import ModelNotFound
from mlops_core.fleet_state import version_key
from mlops_core.signature import MODEL_FILE


class ModelSource(Protocol):
    async def fetch(self, name: str, version: str) -> Path:
        """A local directory holding `model.onnx` (and `signature.json`) for that version."""
        ...


def is_version(name: str) -> bool:
    return name.isascii() and name.isdigit() and int(name) > 0


def versions_on_disk(root: Path, name: str) -> list[str]:
    """Versions of `name` present in a repository directory, lowest first."""
    directory = root / name
    if not directory.is_dir():
        return []
    found = [
        p.name for p in directory.iterdir() if is_version(p.name) and (p / MODEL_FILE).is_file()
    ]
    return sorted(found, key=version_key)


def models_on_disk(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and versions_on_disk(root, p.name))


class DirectorySource:
    """Versions already laid out as `<root>/<model>/<version>/model.onnx`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def fetch(self, name: str, version: str) -> Path:
        directory = self.root / name / version
        if not (directory / MODEL_FILE).is_file():
            raise ModelNotFound(f"model {name!r} version {version!r} is not in {self.root}")
        return directory


def _import_mlflow() -> None:
    import mlflow.artifacts  # noqa: F401


class MlflowSource:
    """Registered versions (`models:/<name>/<version>`), downloaded once into the repository."""

    def __init__(self, tracking_uri: str, cache_root: Path) -> None:
        self.tracking_uri = tracking_uri
        self.cache_root = cache_root
        # NOTE: mlflow takes seconds to import; on a thread from the start, so the first
        # version a replica fetches (the first push after a start) does not wait for it.
        threading.Thread(target=_import_mlflow, name="import-mlflow", daemon=True).start()

    async def fetch(self, name: str, version: str) -> Path:
        target = self.cache_root / name / version
        if (target / MODEL_FILE).is_file():
            return target
        return await asyncio.to_thread(self._download, name, version, target)

    def _download(self, name: str, version: str, target: Path) -> Path:
        import mlflow  # NOTE: imported here: it is slow to import and only fleet mode needs it

        mlflow.set_tracking_uri(self.tracking_uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
        try:
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}", dst_path=str(staging)
            )
        except Exception as exc:  # MLflow raises many types; all mean "not fetchable"
            shutil.rmtree(staging, ignore_errors=True)
            raise ModelNotFound(
                f"cannot fetch models:/{name}/{version} from MLflow: {exc}"
            ) from exc
        found = next(iter(sorted(staging.rglob(MODEL_FILE))), None)
        if found is None:
            shutil.rmtree(staging, ignore_errors=True)
            raise ModelNotFound(f"models:/{name}/{version} has no {MODEL_FILE}")
        # NOTE: rename makes the version appear whole or not at all, even if we crash mid-way.
        if target.exists():
            shutil.rmtree(target)
        found.parent.rename(target)
        shutil.rmtree(staging, ignore_errors=True)
        return target
