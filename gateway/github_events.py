"""GitHub webhook deliveries: signature check and the push events that should run a pipeline."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.repo_urls import normalize_clone_url
from mlops_core.db import Repository
from mlops_core.errors import InvalidInput, Unauthorized

SIGNATURE_PREFIX = "sha256="
_ZERO_SHA = "0" * 40
# A commit id: SHA-1 (40 hex digits) or, in SHA-256 repositories, 64.
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def verify_signature(secret: str, body: bytes, header: str | None) -> None:
    """Check `X-Hub-Signature-256` (`sha256=<hex HMAC-SHA256 of the raw body>`) in constant time."""
    if not header:
        raise Unauthorized("missing X-Hub-Signature-256 header")
    expected = SIGNATURE_PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), header.strip().encode()):
        raise Unauthorized("X-Hub-Signature-256 does not match the body")


@dataclass(frozen=True)
class PushEvent:
    full_name: str
    """`owner/name` in lower case."""
    clone_urls: frozenset[str]
    """Every URL of the repository in the payload, normalised."""
    branch: str | None
    """None for a tag push."""
    head_sha: str
    """The pushed head commit, in lower case."""
    changed_paths: frozenset[str]
    """Paths added or modified by any commit of the push."""
    deleted: bool

    @classmethod
    def parse(cls, payload: Any) -> PushEvent:
        if not isinstance(payload, dict):
            raise InvalidInput("push payload must be a JSON object")
        repository = payload.get("repository")
        if not isinstance(repository, dict):
            raise InvalidInput("push payload has no repository object")
        ref = payload.get("ref")
        if not isinstance(ref, str):
            raise InvalidInput("push payload has no ref")
        head = payload.get("after")
        if not isinstance(head, str):
            raise InvalidInput("push payload has no 'after' commit")
        head = head.lower()
        if not _COMMIT_SHA.fullmatch(head):
            raise InvalidInput("push payload's 'after' is not a commit id (40 or 64 hex digits)")
        urls = (repository.get(k) for k in ("clone_url", "html_url", "url", "git_url", "ssh_url"))
        changed: set[str] = set()
        commits = payload.get("commits") or []
        if not isinstance(commits, list):
            raise InvalidInput("push payload 'commits' must be a list")
        for commit in commits:
            if isinstance(commit, dict):
                for key in ("added", "modified"):
                    changed.update(_paths(commit.get(key)))
        return cls(
            full_name=str(repository.get("full_name") or "").lower(),
            clone_urls=frozenset(normalize_clone_url(u) for u in urls if isinstance(u, str) and u),
            branch=ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None,
            head_sha=head,
            changed_paths=frozenset(changed),
            deleted=bool(payload.get("deleted")) or head == _ZERO_SHA,
        )

    def is_for(self, repo: Repository) -> bool:
        """Same repository (by full name for GitHub ones, by normalised clone URL for every
        one, which is how local repositories match), same branch, and the notebook changed."""
        same_repository = (
            bool(self.full_name) and self.full_name == repo.full_name
        ) or normalize_clone_url(repo.github_url) in self.clone_urls
        return (
            same_repository
            and not self.deleted
            and self.branch == repo.branch
            and repo.notebook_path in self.changed_paths
        )


def _paths(value: Any) -> Iterable[str]:
    if isinstance(value, list):
        return (p.removeprefix("./") for p in value if isinstance(p, str))
    return ()
