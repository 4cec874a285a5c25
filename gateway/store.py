"""The gateway's database work: plain synchronous functions over a SQLAlchemy session.

Routes run them in the threadpool (`run_in_threadpool`) so the event loop never blocks on I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.repo_urls import RepositoryRef
from mlops_core.db import (
    Pipeline,
    PipelineStatus,
    PushRun,
    Repository,
    WebhookDelivery,
    utcnow,
)
from mlops_core.errors import Conflict, PipelineNotFound, RepositoryNotFound
from mlops_core.token_vault import SEALED_PREFIX, TokenVault


def create_repository(
    session: Session,
    ref: RepositoryRef,
    branch: str,
    notebook_path: str,
    github_token: str | None,
    vault: TokenVault,
) -> Repository:
    """Register a repository; its token is sealed before it reaches the database."""
    duplicate = session.scalar(
        select(Repository.id).where(
            Repository.full_name == ref.full_name,
            Repository.branch == branch,
            Repository.notebook_path == notebook_path,
        )
    )
    if duplicate is not None:
        raise Conflict(
            f"{ref.full_name} branch {branch!r} notebook {notebook_path!r} is already "
            f"registered as repository {duplicate}"
        )
    repo = Repository(
        github_url=ref.clone_url,
        full_name=ref.full_name,
        branch=branch,
        notebook_path=notebook_path,
        github_token=vault.seal(github_token) if github_token else None,
    )
    session.add(repo)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent registration won the race
        raise Conflict(f"{ref.full_name} branch {branch!r} is already registered") from exc
    return repo


def seal_legacy_tokens(session: Session, vault: TokenVault) -> int:
    """Seal the plain-text tokens an older version stored; returns how many there were."""
    legacy = session.scalars(
        select(Repository).where(
            Repository.github_token.is_not(None),
            ~Repository.github_token.startswith(SEALED_PREFIX, autoescape=True),
        )
    )
    count = 0
    for repo in legacy:
        assert repo.github_token is not None
        repo.github_token = vault.seal(repo.github_token)
        count += 1
    return count


def list_repositories(session: Session) -> list[Repository]:
    return list(session.scalars(select(Repository).order_by(Repository.id)))


def get_repository(session: Session, repository_id: int) -> Repository:
    repo = session.get(Repository, repository_id)
    if repo is None:
        raise RepositoryNotFound(f"repository {repository_id} not found")
    return repo


def delete_repository(session: Session, repository_id: int) -> None:
    session.delete(get_repository(session, repository_id))


def repositories_on_branch(session: Session, branch: str) -> list[Repository]:
    return list(session.scalars(select(Repository).where(Repository.branch == branch)))


def create_pipeline(
    session: Session,
    repo: Repository,
    commit_sha: str,
    trigger: str,
    delivery_id: str | None = None,
) -> Pipeline:
    pipeline = Pipeline(
        repository_id=repo.id,
        commit_sha=commit_sha,
        branch=repo.branch,
        trigger=trigger,
        delivery_id=delivery_id,
        status=PipelineStatus.QUEUED,
        stage_timings={},
        attempts=0,
    )
    session.add(pipeline)
    session.flush()
    return pipeline


@dataclass(frozen=True)
class DeliveryOutcome:
    pipeline_ids: list[str]
    """Pipelines this delivery started (for a replayed delivery id: the ones it started the
    first time)."""
    duplicate_of: list[str]
    """Pipelines an earlier delivery started for the same repository, commit and notebook:
    this one did not start them again."""
    replayed: bool
    """The delivery id was seen before."""


def record_delivery(
    session: Session, delivery_id: str | None, create: Iterable[tuple[Repository, str]]
) -> DeliveryOutcome:
    """Record a push delivery and start its pipelines, in the caller's transaction.

    A delivery id seen before starts nothing and answers the pipelines it started the first
    time. A (repository, commit) that a push started before is not started again, whatever
    the delivery id. Raises IntegrityError when a concurrent delivery recorded the same id or
    push first: roll back and call again, and this finds what that one recorded.
    """
    if delivery_id is not None:
        if session.get(WebhookDelivery, delivery_id) is not None:
            return DeliveryOutcome(_pipelines_of_delivery(session, delivery_id), [], True)
        session.add(WebhookDelivery(delivery_id=delivery_id))
    started, earlier = [], []
    for repo, sha in create:
        existing = _push_pipeline(session, repo.id, sha)
        if existing is not None:
            earlier.append(existing)
            continue
        pipeline = create_pipeline(session, repo, sha, "push", delivery_id)
        session.add(
            PushRun(
                repository_id=repo.id,
                commit_sha=sha,
                notebook_path=repo.notebook_path,
                pipeline_id=pipeline.id,
            )
        )
        started.append(pipeline.id)
    session.flush()
    return DeliveryOutcome(started, earlier, replayed=False)


def _push_pipeline(session: Session, repository_id: int, sha: str) -> str | None:
    # NOTE: looked up among pipelines rather than push_runs, so pushes recorded before that
    # table existed count too; push_runs' key is what stops two deliveries at once.
    return session.scalar(
        select(Pipeline.id)
        .where(
            Pipeline.repository_id == repository_id,
            Pipeline.commit_sha == sha,
            Pipeline.trigger == "push",
        )
        .order_by(Pipeline.created_at)
        .limit(1)
    )


def _pipelines_of_delivery(session: Session, delivery_id: str) -> list[str]:
    return list(
        session.scalars(
            select(Pipeline.id)
            .where(Pipeline.delivery_id == delivery_id)
            .order_by(Pipeline.created_at)
        )
    )


def list_pipelines(
    session: Session,
    page: int,
    size: int,
    repository_id: int | None = None,
    status: PipelineStatus | None = None,
) -> tuple[list[Pipeline], int]:
    query = select(Pipeline)
    if repository_id is not None:
        query = query.where(Pipeline.repository_id == repository_id)
    if status is not None:
        query = query.where(Pipeline.status == status.value)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    items = session.scalars(
        query.order_by(Pipeline.created_at.desc(), Pipeline.id)
        .offset((page - 1) * size)
        .limit(size)
    )
    return list(items), total


def get_pipeline(session: Session, pipeline_id: str) -> Pipeline:
    pipeline = session.get(Pipeline, pipeline_id)
    if pipeline is None:
        raise PipelineNotFound(f"pipeline {pipeline_id!r} not found")
    return pipeline


def cancel_if_queued(session: Session, pipeline_id: str) -> bool:
    """Mark a pipeline that no worker has started cancelled; False if it is past `queued`."""
    # NOTE: an UPDATE answers with a CursorResult (which counts rows); Session.execute is typed
    # with the Result it shares with SELECT.
    result = cast(
        CursorResult[Any],
        session.execute(
            update(Pipeline)
            .where(Pipeline.id == pipeline_id, Pipeline.status == PipelineStatus.QUEUED.value)
            .values(status=PipelineStatus.CANCELLED.value, finished_at=utcnow())
        ),
    )
    return bool(result.rowcount)
