"""Validation and normalisation of what a user registers: repository URL, branch, notebook path.

One normal form serves both registration (duplicates) and webhook matching: GitHub
repositories are known by `owner/name` in lower case; local ones (tests, air-gapped installs)
by their resolved absolute path. Clone URLs compare without case, `.git` or trailing slash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import SplitResult, unquote, urlsplit

from mlops_core.errors import InvalidInput

_GITHUB_PART = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_BRANCH_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
MAX_PATH_CHARS = 1024


@dataclass(frozen=True)
class RepositoryRef:
    clone_url: str
    """What the worker clones: `https://<host>/<owner>/<name>` or `file:///<abs path>`."""
    full_name: str
    """`owner/name` in lower case (GitHub), or the resolved absolute path (local)."""
    local: bool


def parse_repository_url(url: str, github_base_url: str, allow_local: bool) -> RepositoryRef:
    """Accept `https://github.com/owner/name[.git][/]` (or the `GITHUB_BASE_URL` host for
    GitHub Enterprise) and, when allowed, `file://` URLs and absolute local paths."""
    url = url.strip()
    if not url:
        raise InvalidInput("github_url is empty")
    if url.startswith("file://") or url.startswith("/"):
        if not allow_local:
            raise InvalidInput(
                "local repositories are disabled; set MLOPS_ALLOW_LOCAL_REPOS=true to allow them"
            )
        return _local_ref(url)
    base = urlsplit(github_base_url)
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or parts.scheme != base.scheme:
        raise InvalidInput(f"github_url must be a {base.scheme}:// URL like {_example(base)}")
    if parts.username or parts.password:
        raise InvalidInput(
            "github_url must not contain credentials; pass the token as github_token"
        )
    if parts.query or parts.fragment:
        raise InvalidInput("github_url must not have a query or fragment")
    if (parts.hostname or "").lower() != (base.hostname or "").lower() or parts.port != base.port:
        raise InvalidInput(f"github_url must be on {base.netloc}, like {_example(base)}")
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) == 2 and segments[1].lower().endswith(".git"):
        segments[1] = segments[1][: -len(".git")]
    if (
        len(segments) != 2
        or not all(_GITHUB_PART.match(s) for s in segments)
        or any(s in (".", "..") for s in segments)
    ):
        raise InvalidInput(f"github_url must name one repository, like {_example(base)}")
    owner, name = segments
    return RepositoryRef(
        clone_url=f"{base.scheme}://{base.netloc}/{owner}/{name}",
        full_name=f"{owner}/{name}".lower(),
        local=False,
    )


def _local_ref(url: str) -> RepositoryRef:
    raw = unquote(urlsplit(url).path) if url.startswith("file://") else url
    path = Path(raw)
    if not path.is_absolute():
        raise InvalidInput("a local repository must be an absolute path or file:// URL")
    resolved = path.resolve()
    if not resolved.is_dir():
        raise InvalidInput(f"local repository {raw!r} does not exist or is not a directory")
    return RepositoryRef(clone_url=f"file://{resolved}", full_name=str(resolved), local=True)


def _example(base: SplitResult) -> str:
    return f"{base.scheme}://{base.netloc}/owner/name"


def normalize_clone_url(url: str) -> str:
    """The form two URLs of one repository share: no case, no `.git`, no trailing slash, and
    local paths resolved (so a symlinked temp dir and its target compare equal)."""
    url = url.strip()
    if url.startswith("file://") or url.startswith("/"):
        raw = unquote(urlsplit(url).path) if url.startswith("file://") else url
        url = f"file://{Path(raw).resolve()}"
    url = url.rstrip("/").lower()
    return url[: -len(".git")] if url.endswith(".git") else url


def validate_branch(branch: str) -> str:
    """A branch name git accepts (`git check-ref-format --branch` rules)."""
    if not branch or len(branch) > 255:
        raise InvalidInput("branch must be 1 to 255 characters")
    if (
        _BRANCH_FORBIDDEN.search(branch)
        or ".." in branch
        or "//" in branch
        or "@{" in branch
        or branch == "@"
        or branch.startswith(("-", "/"))
        or branch.endswith(("/", ".", ".lock"))
        or any(part.startswith(".") for part in branch.split("/"))
    ):
        raise InvalidInput(f"branch {branch!r} is not a valid git branch name")
    return branch


def validate_notebook_path(path: str) -> str:
    """A relative `.ipynb` path inside the repository, in normal form (`./` and `//` removed)."""
    if not path or len(path) > MAX_PATH_CHARS:
        raise InvalidInput(f"notebook_path must be 1 to {MAX_PATH_CHARS} characters")
    if "\\" in path or "\x00" in path or any(ord(c) < 0x20 for c in path):
        raise InvalidInput("notebook_path must use forward slashes and printable characters")
    pure = PurePosixPath(path)
    if pure.is_absolute():
        raise InvalidInput("notebook_path must be relative to the repository root")
    if ".." in pure.parts:
        raise InvalidInput("notebook_path must not contain '..'")
    if pure.suffix != ".ipynb" or pure.name == ".ipynb":
        raise InvalidInput("notebook_path must name a .ipynb file")
    return str(pure)
