"""Resolve a branch head with `git ls-remote`, passing a token without putting it in a URL.

The repository's token arrives sealed and is opened here, for that one command only.
"""

from __future__ import annotations

import asyncio
import os
import re

from mlops_core.errors import Conflict, UpstreamError
from mlops_core.git_env import git_environment
from mlops_core.token_vault import TokenVault

LS_REMOTE_TIMEOUT_S = 30.0
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


async def branch_head(
    url: str,
    branch: str,
    stored_token: str | None,
    vault: TokenVault,
    timeout_s: float = LS_REMOTE_TIMEOUT_S,
) -> str:
    """The commit sha `branch` points at in the repository at `url`; `stored_token` is the
    repository's token as the database holds it."""
    github_token = vault.open(stored_token) if stored_token else None
    proc = await asyncio.create_subprocess_exec(
        "git",
        "ls-remote",
        "--heads",
        "--",
        url,
        f"refs/heads/{branch}",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=git_environment(os.environ, github_token),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise UpstreamError(f"git ls-remote {url} did not answer in {timeout_s:.0f}s") from None
    if proc.returncode != 0:
        reason = _redact(err.decode(errors="replace").strip(), github_token)
        raise UpstreamError(f"cannot read branch {branch!r} of {url}: {reason[-500:]}")
    for line in out.decode().splitlines():
        sha, _, ref = line.partition("\t")
        if ref == f"refs/heads/{branch}" and _SHA.match(sha):
            return sha
    raise Conflict(f"branch {branch!r} does not exist in {url}")


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text
