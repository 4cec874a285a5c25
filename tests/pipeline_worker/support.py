"""Helpers for pipeline tests: real git repositories, contract notebooks, pipeline rows."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from pathlib import Path

import nbformat
from sqlalchemy.orm import Session, sessionmaker

from mlops_core import pipeline_queue
from mlops_core.db import Pipeline, PipelineStatus, Repository, session_scope

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_NOTEBOOK = REPO_ROOT / "notebooks" / "example_notebook.ipynb"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "PATH": "/usr/bin:/bin:/usr/local/bin",
}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, env=GIT_ENV, check=True, capture_output=True, text=True
    ).stdout.strip()


def git_repo(path: Path, files: dict[str, str], branch: str = "main") -> str:
    """A repository at `path` with one commit of `files`; returns the commit sha."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "--quiet", "-b", branch)
    return commit(path, files)


def commit(path: Path, files: dict[str, str], message: str = "update") -> str:
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "--quiet", "-m", message)
    return git(path, "rev-parse", "HEAD")


def contract_notebook(
    cells: dict[str, str], model_name: str = "tiny", extra_cells: list[str] | None = None
) -> str:
    """A notebook with `mlops:config` plus one cell per `{tag: source}`."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    params = nbformat.v4.new_code_cell(
        'MODEL_OUTPUT_PATH = "model.joblib"\nPIPELINE_ID = "local"\nMLFLOW_TRACKING_URI = None'
    )
    params.metadata["tags"] = ["parameters"]
    config = nbformat.v4.new_code_cell(f'MODEL_NAME = "{model_name}"\nVERSION = "0.1"')
    config.metadata["tags"] = ["mlops:config"]
    nb.cells = [params, config]
    for tag, source in cells.items():
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["tags"] = [tag]
        nb.cells.append(cell)
    nb.cells += [nbformat.v4.new_code_cell(s) for s in extra_cells or []]
    return nbformat.writes(nb)


TINY_MODEL = {
    "mlops:preprocessing": "import numpy as np\nX = np.arange(40, dtype=float).reshape(20, 2)\n"
    "y = (X[:, 0] > 20).astype(int)",
    "mlops:training": "from sklearn.tree import DecisionTreeClassifier\n"
    "model = DecisionTreeClassifier(max_depth=2, random_state=0).fit(X, y)",
    "mlops:export": "import joblib\njoblib.dump(model, MODEL_OUTPUT_PATH)",
}


def create_pipeline(
    sessions: sessionmaker[Session],
    github_url: str,
    commit_sha: str,
    *,
    notebook_path: str = "train.ipynb",
    branch: str = "main",
    token: str | None = None,
) -> str:
    """The rows the gateway would write: a repository and a queued pipeline."""
    with session_scope(sessions) as session:
        repo = Repository(
            github_url=github_url,
            full_name=github_url,
            branch=branch,
            notebook_path=notebook_path,
            github_token=token,
        )
        session.add(repo)
        session.flush()
        pipeline = Pipeline(repository_id=repo.id, commit_sha=commit_sha, branch=branch)
        session.add(pipeline)
        session.flush()
        return pipeline.id


async def enqueue(redis_url: str, pipeline_id: str) -> None:
    arq = await pipeline_queue.connect(redis_url)
    try:
        assert await pipeline_queue.enqueue_pipeline(arq, pipeline_id)
    finally:
        await arq.aclose()


def get_pipeline(sessions: sessionmaker[Session], pipeline_id: str) -> Pipeline:
    with session_scope(sessions) as session:
        pipeline = session.get(Pipeline, pipeline_id)
        assert pipeline is not None
        session.expunge(pipeline)
        return pipeline


async def wait_for_status(
    sessions: sessionmaker[Session],
    pipeline_id: str,
    statuses: set[str] | None = None,
    timeout_s: float = 120,
) -> Pipeline:
    """Wait until the pipeline reaches one of `statuses` (default: any terminal state)."""
    wanted = statuses or {s.value for s in PipelineStatus if s.terminal}
    deadline = time.monotonic() + timeout_s
    while True:
        pipeline = get_pipeline(sessions, pipeline_id)
        if pipeline.status in wanted:
            return pipeline
        if time.monotonic() > deadline:
            raise TimeoutError(f"pipeline {pipeline_id} still {pipeline.status} after {timeout_s}s")
        await asyncio.sleep(0.2)


# A notebook body that imports nothing heavy: enough to test control flow quickly.
NO_SKLEARN = {
    "mlops:preprocessing": "rows = [[1.0, 2.0]]",
    "mlops:training": "model = None",
    "mlops:export": "print('not saving anything')",
}


async def run_contract_notebook(
    sessions: sessionmaker[Session],
    redis_url: str,
    tmp_path: Path,
    cells: dict[str, str],
    model_name: str,
    token: str | None = None,
) -> Pipeline:
    """Push a contract notebook with `cells` to a new local repository, queue its pipeline
    (with `token`, sealed, as the repository's access token) and wait for it to end."""
    origin = tmp_path / f"origin-{uuid.uuid4().hex[:8]}"
    sha = git_repo(origin, {"train.ipynb": contract_notebook(cells, model_name=model_name)})
    pipeline_id = create_pipeline(sessions, origin.as_uri(), sha, token=token)
    await enqueue(redis_url, pipeline_id)
    return await wait_for_status(sessions, pipeline_id, timeout_s=180)
