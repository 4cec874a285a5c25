"""The environment of a git command that may carry a repository's token: the one place a token
is handed to git, by the gateway (`git ls-remote`) and the pipeline worker (the clone stage).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping


def git_environment(
    base: Mapping[str, str], token: str | None, config: Mapping[str, str] | None = None
) -> dict[str, str]:
    """`base` plus what every git call of ours needs: git never prompts; `config` is set through
    git's `GIT_CONFIG_*` variables, and so is a token, as an `Authorization` header, so it is in
    neither the URL, argv, nor git's output."""
    settings = dict(config or {})
    if token:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        settings["http.extraHeader"] = f"Authorization: Basic {basic}"
    env = {**base, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}
    env["GIT_CONFIG_COUNT"] = str(len(settings))
    for index, (key, value) in enumerate(settings.items()):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env
