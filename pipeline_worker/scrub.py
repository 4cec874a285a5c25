"""Keeping the platform's secrets out of the kernel's environment and out of every log line."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

# Variables the platform itself reads that grant access to something.
PLATFORM_SECRETS = frozenset(
    {"GITHUB_WEBHOOK_SECRET", "MLOPS_API_KEY", "REDIS_URL", "DATABASE_URL", "GITHUB_TOKEN"}
)
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_KEY", re.IGNORECASE)
# Shorter values are too likely to occur by chance in ordinary output to be worth masking.
MIN_SECRET_LENGTH = 6
MASK = "***"


def is_secret_name(name: str) -> bool:
    return name.upper() in PLATFORM_SECRETS or bool(SECRET_NAME.search(name))


def kernel_environment(
    base: Mapping[str, str] | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A copy of the environment without the platform's secrets, with the worker's Python
    first on PATH (so `!pip` and subprocesses in the notebook use the platform's environment),
    plus `extra` (MLflow run and tracking URI)."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if not is_secret_name(k)}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(
        [bin_dir, *[p for p in env.get("PATH", "").split(os.pathsep) if p]]
    )
    env.update(extra or {})
    return env


def secret_values(
    env: Mapping[str, str] | None = None, extra: Iterable[str | None] = ()
) -> set[str]:
    """Values to mask in logs: secret variables, passwords inside URLs, and `extra`."""
    source = os.environ if env is None else env
    values = {v for k, v in source.items() if is_secret_name(k)}
    for value in list(values):
        if "://" in value:
            password = urlsplit(value).password
            if password:
                values.add(password)
    values.update(v for v in extra if v)
    return {v for v in values if len(v) >= MIN_SECRET_LENGTH}


class Redactor:
    """Masks known secret values in text; longest first so a secret containing another is
    masked whole."""

    def __init__(self, secrets: Iterable[str]) -> None:
        ordered = sorted(set(secrets), key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern else text
