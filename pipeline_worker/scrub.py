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


# Variables passed from the worker's environment into a box: locale, time zone and the
# numeric libraries' knobs (some processors need OPENBLAS_CORETYPE to compute correctly).
# Nothing else crosses: the box's environment is built, not filtered.
BOX_PASSTHROUGH = (
    "LANG",
    "LC_ALL",
    "TZ",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)


def box_environment(
    extra: Mapping[str, str], base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The whole environment of boxed code: the platform's Python first on PATH (so `!pip`
    and subprocesses use it), a private HOME, the pass-through variables above, and `extra`
    (the injected MLflow store and run). Secret-looking names never pass, whatever `extra`."""
    source = os.environ if base is None else base
    env = {k: source[k] for k in BOX_PASSTHROUGH if k in source}
    env.setdefault("LANG", "C.UTF-8")
    env.update(
        {
            "PATH": os.pathsep.join(
                [str(Path(sys.prefix) / "bin"), "/usr/local/bin", "/usr/bin", "/bin"]
            ),
            "HOME": "/tmp",
            "PYTHONUNBUFFERED": "1",
            "MPLBACKEND": "Agg",
            **extra,
        }
    )
    return {k: v for k, v in env.items() if not is_secret_name(k)}


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
