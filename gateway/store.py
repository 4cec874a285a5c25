"""The gateway's database work: plain synchronous functions over a SQLAlchemy session.

Routes run them in the threadpool (`run_in_threadpool`) so the event loop never blocks on I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.repo_urls import RepositoryRef
from mlops_core.db import Pipeline, PipelineStatus, Repository, WebhookDelivery, utcnow
from mlops_core.errors import Conflict, PipelineNotFound, RepositoryNotFound


def create_repository(
    session: Session,
    ref: RepositoryRef,
    branch: str,
    notebook_path: str,
    github_token: str | None,
) -> Repository:
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
        github_token=github_token,
    )
    session.add(repo)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent registration won the race
        raise Conflict(f"{ref.full_name} branch {branch!r} is already registered") from exc
    return repo


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
    replayed: bool


def record_delivery(
    session: Session, delivery_id: str | None, create: Iterable[tuple[Repository, str]]
) -> DeliveryOutcome:
    """Record a push delivery and create its pipelines in one transaction; a delivery id seen
    before creates nothing and answers the pipelines it created the first time."""
    if delivery_id is not None:
        if session.get(WebhookDelivery, delivery_id) is not None:
            return DeliveryOutcome(_pipelines_of_delivery(session, delivery_id), replayed=True)
        session.add(WebhookDelivery(delivery_id=delivery_id))
        try:
            session.flush()
        except IntegrityError:  # the same delivery arrived twice at once; the other one won
            session.rollback()
            return DeliveryOutcome(_pipelines_of_delivery(session, delivery_id), replayed=True)
    ids = [create_pipeline(session, repo, sha, "push", delivery_id).id for repo, sha in create]
    return DeliveryOutcome(ids, replayed=False)


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
    result = session.execute(
        update(Pipeline)
        .where(Pipeline.id == pipeline_id, Pipeline.status == PipelineStatus.QUEUED.value)
        .values(status=PipelineStatus.CANCELLED.value, finished_at=utcnow())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
