"""What the deployment files may refer to: setting names and defaults, service commands."""

from __future__ import annotations

import importlib.util
import shlex
from argparse import Namespace

from launcher.readiness import Check
from launcher.wait import parse as parse_wait
from mlops_core.settings import Settings

DEFAULTS = Settings(_env_file=None, redis_url=None)  # type: ignore[call-arg]
SETTING_NAMES = {
    info.validation_alias.choices[0]  # type: ignore[union-attr]
    for info in Settings.model_fields.values()
}
SECRET_NAMES = {"GITHUB_WEBHOOK_SECRET", "MLOPS_API_KEY"}


def python_module(command: list[str]) -> str:
    """The module a `python -m MODULE ...` command runs, checked to be runnable."""
    assert command[:2] == ["python", "-m"], command
    module = command[2]
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"no module {module}"
    if spec.submodule_search_locations is not None:
        assert importlib.util.find_spec(f"{module}.__main__") is not None, f"no {module}.__main__"
    return module


def inference_args(command: list[str]) -> Namespace:
    """An inference command parsed by the server's own argument parser."""
    from inference.__main__ import parse_args

    assert python_module(command) == "inference"
    return parse_args(DEFAULTS, command[3:])


def healthcheck(test: list[str] | str) -> list[Check]:
    """A container health check run through the wait wrapper's own parser; its checks."""
    argv = test if isinstance(test, list) else ["CMD-SHELL", test]
    assert argv[0] == "CMD", "exec form, so no shell is needed in the image"
    assert python_module(argv[1:4]) == "launcher.wait"
    checks, timeout_s, command = parse_wait(argv[4:])
    assert checks and command == ["true"] and timeout_s <= 5
    return checks


def mlflow_flags(command: list[str]) -> dict[str, str]:
    """`mlflow server --flag value ...` as {flag: value}."""
    assert command[:2] == ["mlflow", "server"], shlex.join(command)
    flags = command[2:]
    return dict(zip(flags[::2], flags[1::2], strict=True))
