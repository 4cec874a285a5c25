"""Clone stage: fetch exactly one commit of the registered repository, shallow, with a timeout.

The repository's token arrives sealed (as the database holds it) and is opened here, only for
the fetch commands: it reaches git through `GIT_CONFIG_*` variables of those commands (an
`Authorization` header), never through the URL, so no URL we log or store can carry it.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mlops_core.db import PipelineStatus
from mlops_core.errors import PipelineError, TokenUnreadable
from mlops_core.git_env import git_environment
from mlops_core.settings import Settings
from mlops_core.token_vault import InvalidSecretKey, TokenVault, is_sealed
from pipeline_worker.scrub import Redactor

STAGE = PipelineStatus.CLONING
SHA = re.compile(r"^[0-9a-f]{7,64}$")
LogFn = Callable[[str], Awaitable[None]]
RedactFn = Callable[[str], str]


@dataclass(frozen=True)
class CloneResult:
    workdir: Path
    commit_sha: str
    """The full sha checked out (resolved from the branch head when none was given)."""


def clone_url(github_url: str, settings: Settings) -> str:
    """The URL git fetches from: the registered one, checked against the local-repository rule.

    `owner/name` alone means a repository on `GITHUB_BASE_URL`. Credentials written into a URL
    are refused rather than used, because a URL ends up in logs.
    """
    url = github_url.strip()
    parts = urlsplit(url)
    if parts.scheme in ("http", "https", "ssh", "git"):
        if parts.username or parts.password:
            raise PipelineError(
                STAGE,
                "the repository URL contains credentials; register it without them and give "
                "the token as github_token",
            )
        return url
    local = parts.scheme == "file" or url.startswith(("/", ".", "~")) or Path(url).exists()
    if local:
        if not settings.allow_local_repos:
            raise PipelineError(
                STAGE,
                f"local repository {url!r} refused: set MLOPS_ALLOW_LOCAL_REPOS=true to allow "
                "file:// URLs and paths",
            )
        if parts.scheme == "file":
            return url
        return Path(url).expanduser().resolve().as_uri()
    if re.fullmatch(r"[\w.-]+/[\w.-]+", url):
        return f"{settings.github_base_url.rstrip('/')}/{url.removesuffix('.git')}.git"
    raise PipelineError(STAGE, f"cannot clone {url!r}: not a repository URL")


CLONE_ENV_NAMES = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR")
"""What the clone's git commands see of the worker's environment."""


def clone_environment(token: str | None) -> dict[str, str]:
    """Environment for one git command of the clone: the worker's secrets stay out of it, and
    the token (when given) is sent as a header."""
    base = {k: v for k, v in os.environ.items() if k in CLONE_ENV_NAMES}
    base |= {"GIT_CONFIG_NOSYSTEM": "1", "GIT_PROTOCOL": "version=2"}
    # NOTE: protocol.file.allow keeps the file:// transport usable under newer git defaults;
    # whether local URLs are allowed at all was decided by `clone_url`.
    config = {"protocol.file.allow": "always", "advice.detachedHead": "false"}
    return git_environment(base, token, config)


def open_token(stored: str | None, settings: Settings) -> str | None:
    """The token to send, from its stored form; a failure is the clone stage's."""
    if not stored or not is_sealed(stored):
        return stored or None
    try:
        return TokenVault.from_settings(settings).open(stored)
    except TokenUnreadable as exc:
        raise PipelineError(STAGE, exc.message) from None
    except InvalidSecretKey as exc:
        raise PipelineError(STAGE, str(exc)) from None


async def _git(
    args: list[str], cwd: Path, env: dict[str, str], timeout_s: float, redact: RedactFn
) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    except asyncio.CancelledError:
        proc.kill()
        raise
    return proc.returncode or 0, redact(out.decode(errors="replace").strip())


async def clone(
    github_url: str,
    branch: str,
    commit_sha: str | None,
    dest: Path,
    *,
    token: str | None,
    settings: Settings,
    log: LogFn,
    redact: Redactor | None = None,
) -> CloneResult:
    """Fetch `commit_sha` (or the head of `branch` when it is empty or `HEAD`) into `dest`.

    `token` is the repository's token as stored (sealed, or plain text from an older version).
    """
    url = clone_url(github_url, settings)
    plain_token = open_token(token, settings)
    token_mask = Redactor([plain_token] if plain_token else [])

    def scrub(text: str) -> str:
        return token_mask(redact(text) if redact else text)

    env, fetch_env = clone_environment(None), clone_environment(plain_token)
    await asyncio.to_thread(dest.mkdir, parents=True, exist_ok=True)
    wanted = (commit_sha or "").strip().lower()
    target = wanted if SHA.match(wanted) else f"refs/heads/{branch}"
    await log(f"fetching {target if target != wanted else wanted[:12]} from {scrub(url)}")

    deadline = asyncio.get_running_loop().time() + settings.clone_timeout_s

    async def run(*args: str) -> tuple[int, str]:
        remaining = deadline - asyncio.get_running_loop().time()
        git_env = fetch_env if args[0] == "fetch" else env
        try:
            return await _git(list(args), dest, git_env, max(remaining, 0.1), scrub)
        except TimeoutError:
            raise PipelineError(
                STAGE, f"git did not finish within {settings.clone_timeout_s:.0f}s cloning {url}"
            ) from None

    await run("init", "--quiet", ".")
    await run("remote", "add", "origin", url)
    code, out = await run("fetch", "--quiet", "--depth", "1", "--no-tags", "origin", target)
    if code != 0 and target == wanted:
        # NOTE: a server that refuses to serve an arbitrary sha shallowly (old git, some hosts)
        # still serves the branch; the commit must then be in its history.
        code, out = await run("fetch", "--quiet", "--no-tags", "origin", f"refs/heads/{branch}")
    if code != 0:
        raise PipelineError(STAGE, f"cannot fetch {target} from {url}: {_last_line(out)}")
    code, out = await run(
        "checkout", "--quiet", "--detach", wanted if target == wanted else "FETCH_HEAD"
    )
    if code != 0:
        raise PipelineError(
            STAGE, f"commit {wanted or branch} is not in {url} (branch {branch}): {_last_line(out)}"
        )
    _, sha = await run("rev-parse", "HEAD")
    await log(f"checked out {sha}")
    return CloneResult(workdir=dest, commit_sha=sha.strip())


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
