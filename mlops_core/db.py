"""The database schema (repositories, pipelines, webhook deliveries) and its engine.

SQLite in the data directory by default; PostgreSQL through `DATABASE_URL` when scaled out.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


class PipelineStatus(enum.StrEnum):
    QUEUED = "queued"
    CLONING = "cloning"
    VALIDATING = "validating"
    EXECUTING = "executing"
    CONVERTING = "converting"
    VERIFYING = "verifying"
    REGISTERING = "registering"
    DEPLOYING = "deploying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {PipelineStatus.SUCCEEDED, PipelineStatus.FAILED, PipelineStatus.CANCELLED}
)
# The running stages, in the order the worker runs them.
STAGES: tuple[PipelineStatus, ...] = (
    PipelineStatus.CLONING,
    PipelineStatus.VALIDATING,
    PipelineStatus.EXECUTING,
    PipelineStatus.CONVERTING,
    PipelineStatus.VERIFYING,
    PipelineStatus.REGISTERING,
    PipelineStatus.DEPLOYING,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Repository(Base):
    __tablename__ = "repositories"
    __table_args__ = (UniqueConstraint("full_name", "branch", "notebook_path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    github_url: Mapped[str] = mapped_column(String(1024))
    full_name: Mapped[str] = mapped_column(String(1024), index=True)
    """`owner/name` in lower case for GitHub repositories; the resolved path for local ones."""
    branch: Mapped[str] = mapped_column(String(255))
    notebook_path: Mapped[str] = mapped_column(String(1024))
    github_token: Mapped[str | None] = mapped_column(Text, nullable=True)
    """Sealed by `mlops_core.token_vault` and opened only for the git command that needs it;
    never returned by the API, never logged. A value without the sealed prefix is a plain-text
    token from an older version, sealed in place when the gateway starts."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Pipeline(Base):
    __tablename__ = "pipelines"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    repository_id: Mapped[int | None] = mapped_column(
        ForeignKey("repositories.id", ondelete="SET NULL"), nullable=True, index=True
    )
    commit_sha: Mapped[str] = mapped_column(String(64))
    branch: Mapped[str] = mapped_column(String(255))
    trigger: Mapped[str] = mapped_column(String(32), default="push")
    """`push` (webhook) or `manual` (POST /repos/{id}/trigger)."""
    delivery_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    status: Mapped[str] = mapped_column(String(32), default=PipelineStatus.QUEUED, index=True)
    error_stage: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    """The MLflow registered-model version this pipeline produced."""
    notebook_version: Mapped[str | None] = mapped_column(String(255), nullable=True)
    """The notebook's own `VERSION` literal."""
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    stage_timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """Seconds spent in each stage."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    log: Mapped[str | None] = mapped_column(Text, nullable=True)
    """The final log, kept when the pipeline ends."""
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"

    delivery_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PushRun(Base):
    """One row per repository, commit and notebook a webhook push started a pipeline for.

    GitHub's delivery id is outside the HMAC signature, so a signed body sent again under a
    new id is known only by what it asks for: the gateway looks for a push pipeline of the
    same repository and commit, and this primary key stops two deliveries that arrive at
    once from both starting one. (A table of its own, so `create_all` adds it to a database
    an older version made.)
    """

    __tablename__ = "push_runs"

    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True
    )
    commit_sha: Mapped[str] = mapped_column(String(64), primary_key=True)
    notebook_path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    pipeline_id: Mapped[str] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RolloutRow(Base):
    """One rollout of a candidate version against the champion, with every decision made."""

    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    model_name: Mapped[str] = mapped_column(String(255), index=True)
    pipeline_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    champion: Mapped[str] = mapped_column(String(32))
    candidate: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(32), index=True)
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The whole record (`mlops_core.rollouts.RolloutRecord`) as JSON."""
    started_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )


class AliasEvent(Base):
    """A move of an MLflow alias (`champion`, `challenger`) of a model: the history MLflow
    itself does not keep."""

    __tablename__ = "alias_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(255), index=True)
    alias: Mapped[str] = mapped_column(String(32))
    version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    """None: the alias was removed."""
    reason: Mapped[str] = mapped_column(Text)
    pipeline_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PolicyRow(Base):
    __tablename__ = "rollout_policies"

    model_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def make_engine(url: str) -> Engine:
    """An engine with the schema created; SQLite in WAL mode so the gateway and the workers
    can read and write at once."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn: Any, _record: Any) -> None:
            cursor = conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            # NOTE: deleted and overwritten content is zeroed, so a value replaced in place
            # (a plain-text token sealed) leaves no copy in the file's free space.
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.close()
    else:
        engine = create_engine(url, pool_pre_ping=True)
    _create_schema(engine)
    return engine


def _create_schema(engine: Engine, attempts: int = 5) -> None:
    # NOTE: processes starting together on a fresh database (two gateway workers, say) each
    # see a table missing and create it, and all but one fail with "already exists"; create_all
    # checks before it creates, so trying again finishes whatever the other process left.
    for attempt in range(attempts):
        try:
            Base.metadata.create_all(engine)
            return
        except OperationalError as exc:
            if "already exists" not in str(exc) or attempt == attempts - 1:
                raise


def checkpoint(engine: Engine) -> None:
    """On SQLite, copy the write-ahead log into the database file and empty it, so pages
    superseded by the last writes are gone from disk; nothing to do elsewhere."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
