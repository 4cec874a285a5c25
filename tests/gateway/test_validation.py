"""The gateway's pure input checks, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.github_events import PushEvent, verify_signature
from gateway.repo_urls import normalize_clone_url, parse_repository_url
from mlops_core.db import Repository
from mlops_core.errors import InvalidInput, Unauthorized


def test_local_repositories_need_the_setting(tmp_path: Path):
    with pytest.raises(InvalidInput, match="MLOPS_ALLOW_LOCAL_REPOS=true"):
        parse_repository_url(str(tmp_path), "https://github.com", allow_local=False)
    with pytest.raises(InvalidInput, match="MLOPS_ALLOW_LOCAL_REPOS=true"):
        parse_repository_url(f"file://{tmp_path}", "https://github.com", allow_local=False)
    ref = parse_repository_url(f"file://{tmp_path}/", "https://github.com", allow_local=True)
    assert ref.local and ref.clone_url == f"file://{tmp_path.resolve()}"


def test_github_enterprise_host_comes_from_the_base_url():
    ref = parse_repository_url("https://ghe.corp:8443/Team/Model", "https://ghe.corp:8443", False)
    assert ref.clone_url == "https://ghe.corp:8443/Team/Model" and ref.full_name == "team/model"
    with pytest.raises(InvalidInput, match=r"must be on ghe\.corp:8443"):
        parse_repository_url("https://github.com/team/model", "https://ghe.corp:8443", False)


def test_clone_urls_compare_without_case_git_or_slash(tmp_path: Path):
    assert normalize_clone_url("https://github.com/Acme/Repo.git") == normalize_clone_url(
        "https://github.com/acme/repo/"
    )
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "real", target_is_directory=True)
    assert normalize_clone_url(f"file://{link}/x.git") == normalize_clone_url(f"{tmp_path}/real/x")


def test_signature_is_checked_in_constant_time_form():
    body = b'{"a": 1}'
    good = "sha256=" + "__expected__"
    with pytest.raises(Unauthorized, match="missing"):
        verify_signature("s", body, None)
    with pytest.raises(Unauthorized, match="does not match"):
        verify_signature("s", body, good)


def repo(**fields) -> Repository:
    base = {
        "github_url": "https://github.com/acme/iris",
        "full_name": "acme/iris",
        "branch": "main",
        "notebook_path": "nb/train.ipynb",
    }
    return Repository(**{**base, **fields})


def push(**fields) -> PushEvent:
    payload = {
        "ref": "refs/heads/main",
        "after": "a" * 40,
        "repository": {"full_name": "Acme/Iris", "clone_url": "https://github.com/Acme/Iris.git"},
        "commits": [{"added": [], "modified": ["nb/train.ipynb"]}],
        **fields,
    }
    return PushEvent.parse(payload)


def test_push_matching():
    assert push().is_for(repo())
    assert push(
        repository={"full_name": "x/y", "clone_url": "https://github.com/ACME/iris/"}
    ).is_for(repo())
    assert not push(repository={"full_name": "acme/other"}).is_for(repo())
    assert not push(ref="refs/heads/dev").is_for(repo())
    assert not push(ref="refs/tags/main").is_for(repo())
    assert not push(commits=[{"added": ["nb/other.ipynb"], "modified": ["README.md"]}]).is_for(
        repo()
    )
    assert push(commits=[{"modified": []}, {"added": ["./nb/train.ipynb"]}]).is_for(repo())
    assert not push(deleted=True).is_for(repo())
    with pytest.raises(InvalidInput, match="no repository"):
        push(repository=None)
    with pytest.raises(InvalidInput, match="'commits' must be a list"):
        push(commits="x")
