"""Push dedupe in a real SQLite database: a database made before `push_runs` existed gains
it on start, its earlier pushes count as started, and the key follows its repository."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, inspect, select

from gateway import store
from mlops_core.db import (
    Base,
    Pipeline,
    PushRun,
    Repository,
    make_engine,
    make_session_factory,
    session_scope,
)

OLD_SHA, NEW_SHA = "a" * 40, "b" * 40


def older_version_database(path: Path) -> str:
    """A database as the version before push_runs left it: one repository, one push run."""
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    older_tables = [t for t in Base.metadata.sorted_tables if t.name != PushRun.__tablename__]
    Base.metadata.create_all(engine, tables=older_tables)
    with engine.begin() as conn:
        conn.execute(
            Repository.__table__.insert().values(
                id=1,
                github_url="https://github.com/acme/iris",
                full_name="acme/iris",
                branch="main",
                notebook_path="train.ipynb",
            )
        )
        conn.execute(
            Pipeline.__table__.insert().values(
                id="old-push",
                repository_id=1,
                commit_sha=OLD_SHA,
                branch="main",
                trigger="push",
                status="succeeded",
                stage_timings={},
                attempts=1,
            )
        )
    assert not inspect(engine).has_table(PushRun.__tablename__)
    engine.dispose()
    return url


def test_an_older_database_gains_push_runs_and_its_pushes_count(tmp_path: Path):
    engine = make_engine(older_version_database(tmp_path / "old.db"))
    assert inspect(engine).has_table(PushRun.__tablename__)
    sessions = make_session_factory(engine)

    with session_scope(sessions) as session:
        repo = store.get_repository(session, 1)
        replay = store.record_delivery(session, "new-id", [(repo, OLD_SHA)])
        assert (replay.pipeline_ids, replay.duplicate_of) == ([], ["old-push"])
        fresh = store.record_delivery(session, "other-id", [(repo, NEW_SHA)])
        assert fresh.duplicate_of == [] and len(fresh.pipeline_ids) == 1

    with session_scope(sessions) as session:
        (run,) = session.scalars(select(PushRun))
        assert (run.repository_id, run.commit_sha, run.notebook_path, run.pipeline_id) == (
            1,
            NEW_SHA,
            "train.ipynb",
            fresh.pipeline_ids[0],
        )
        again = store.record_delivery(session, None, [(store.get_repository(session, 1), NEW_SHA)])
        assert (again.pipeline_ids, again.duplicate_of) == ([], fresh.pipeline_ids)

    # A deleted repository takes its keys along: registered anew, its pushes run again.
    with session_scope(sessions) as session:
        store.delete_repository(session, 1)
    with session_scope(sessions) as session:
        assert list(session.scalars(select(PushRun))) == []
        repo = Repository(
            github_url="https://github.com/acme/iris",
            full_name="acme/iris",
            branch="main",
            notebook_path="train.ipynb",
        )
        session.add(repo)
        session.flush()
        anew = store.record_delivery(session, "third-id", [(repo, NEW_SHA)])
        assert anew.duplicate_of == [] and len(anew.pipeline_ids) == 1
    engine.dispose()
