"""DATABASE_URL on PostgreSQL, as the Kubernetes manifests expect: the shared schema works on a
real server with the installed driver (psycopg 3)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.processes import ManagedProcess, free_port, port_open
from mlops_core.db import (
    Pipeline,
    PipelineStatus,
    Repository,
    make_engine,
    make_session_factory,
    session_scope,
)

BIN = Path("/usr/lib/postgresql")


def postgres_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(BIN.glob(f"*/bin/{name}"))
    return str(versions[-1]) if versions else None


def as_postgres_user(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the `postgres` account when we are root."""
    if os.geteuid() != 0:
        return argv
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", *argv]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    initdb, server = postgres_bin("initdb"), postgres_bin("postgres")
    if not (initdb and server):
        pytest.skip("PostgreSQL server binaries are not installed")
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres account to run the server")
    root = Path(tempfile.mkdtemp(prefix="mlops-pg-"))
    if os.geteuid() == 0:
        os.chown(root, account.pw_uid, account.pw_gid)
    data = root / "data"
    init = [initdb, "-D", str(data), "-A", "trust", "-U", "mlops", "-E", "UTF8", "--no-sync"]
    subprocess.run(as_postgres_user(init), check=True, capture_output=True, timeout=120)
    port = free_port()
    argv = [server, "-D", str(data), "-p", str(port), "-k", str(root), "-F"]
    argv += ["-c", "listen_addresses=127.0.0.1"]
    process = ManagedProcess("postgres", as_postgres_user(argv), root).start()
    try:
        process.wait_until(lambda: port_open(port), 60, "postgres port open")
        yield f"postgresql+psycopg://mlops@127.0.0.1:{port}/postgres"
    finally:
        process.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_the_schema_and_a_pipeline_round_trip(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    sessions = make_session_factory(engine)
    with session_scope(sessions) as session:
        repo = Repository(
            github_url="https://github.com/acme/iris",
            full_name="acme/iris",
            branch="main",
            notebook_path="notebooks/train.ipynb",
        )
        session.add(repo)
        session.flush()
        session.add(
            Pipeline(
                repository_id=repo.id,
                commit_sha="9fceb02",
                branch="main",
                stage_timings={"cloning": 0.4},
            )
        )
    with session_scope(sessions) as session:
        (pipeline,) = session.query(Pipeline).all()
        assert pipeline.status == PipelineStatus.QUEUED
        assert pipeline.stage_timings == {"cloning": 0.4}
        assert pipeline.created_at.tzinfo is not None
    engine.dispose()
