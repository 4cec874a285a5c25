"""Registered repositories: register, list, read, delete, and trigger a run."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from gateway import pipeline_runs, store
from gateway.deps import ResourcesDep
from gateway.repo_urls import parse_repository_url, validate_branch, validate_notebook_path
from gateway.schemas import RepositoryCreate, RepositoryOut, TriggeredPipeline, error_responses

router = APIRouter(prefix="/repos", tags=["repositories"])

RepositoryId = Annotated[int, Path(ge=1, le=2**63 - 1, description="Repository id")]
NOT_FOUND = (404, "repository 7 not found")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=RepositoryOut,
    responses=error_responses(
        (409, "acme/iris-training branch 'main' notebook 'train.ipynb' is already registered"),
        (422, "github_url must be on github.com, like https://github.com/owner/name"),
    ),
)
async def register(body: RepositoryCreate, resources: ResourcesDep) -> RepositoryOut:
    """Register a repository whose notebook runs on every push that changes it."""
    settings = resources.settings
    ref = parse_repository_url(
        body.github_url, settings.github_base_url, settings.allow_local_repos
    )
    branch = validate_branch(body.branch)
    notebook = validate_notebook_path(body.notebook_path)
    repo = await resources.db(
        store.create_repository, ref, branch, notebook, body.github_token, resources.vault
    )
    return RepositoryOut.of(repo)


@router.get("", response_model=list[RepositoryOut])
async def list_repositories(resources: ResourcesDep) -> list[RepositoryOut]:
    """Every registered repository (tokens are never returned, only `has_token`)."""
    return [RepositoryOut.of(r) for r in await resources.db(store.list_repositories)]


@router.get("/{repository_id}", response_model=RepositoryOut, responses=error_responses(NOT_FOUND))
async def get_repository(repository_id: RepositoryId, resources: ResourcesDep) -> RepositoryOut:
    """One registered repository."""
    return RepositoryOut.of(await resources.db(store.get_repository, repository_id))


@router.delete(
    "/{repository_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(NOT_FOUND),
)
async def delete_repository(repository_id: RepositoryId, resources: ResourcesDep) -> None:
    """Forget a repository (its pipelines stay, with no repository)."""
    await resources.db(store.delete_repository, repository_id)


@router.post(
    "/{repository_id}/trigger",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TriggeredPipeline,
    responses=error_responses(
        NOT_FOUND,
        (409, "branch 'main' does not exist in https://github.com/acme/iris-training"),
        (502, "cannot read branch 'main' of https://github.com/acme/iris-training: ..."),
    ),
)
async def trigger(repository_id: RepositoryId, resources: ResourcesDep) -> TriggeredPipeline:
    """Run the pipeline on the branch head now, without a push (with Redis away: 202 all the
    same, the pipeline kept as `queued` until it is back, `note` says so)."""
    return await pipeline_runs.trigger(resources, repository_id)
