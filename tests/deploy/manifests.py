"""What the deployment files may refer to: setting names and defaults, service commands."""

from __future__ import annotations

import importlib.util
import shlex
from argparse import Namespace
from dataclasses import replace
from typing import Any

from launcher.readiness import Check
from launcher.wait import parse as parse_wait
from mlops_core.settings import Settings
from pipeline_worker.sandbox import BOX_WORKDIR, BoxJob, Limits
from pipeline_worker.sandbox.kubernetes import render_job

DEFAULTS = Settings(_env_file=None, redis_url=None)
SETTING_NAMES = {info.validation_alias.choices[0] for info in Settings.model_fields.values()}
SECRET_NAMES = {"GITHUB_WEBHOOK_SECRET", "MLOPS_API_KEY"}
"""The gateway's secrets."""
REPLICA_SECRET_NAMES = {"MLOPS_API_KEY"}
"""The gateway's secrets a replica gets too: native gRPC clients reach it directly, so it
checks the same API key (`inference.api_key`)."""
SANDBOX_SETTINGS = Settings(_env_file=None, redis_url=None, data_dir="/data", sandbox="kubernetes")
"""The worker's settings under deploy/kubernetes (config.yaml's MLOPS_DATA_DIR)."""
SANDBOX_IMAGE = "registry.example/mlops-platform:1.4.2"


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


def worker_probe(command: list[str]) -> Namespace:
    """A worker heartbeat probe command parsed by the probe's own argument parser."""
    from pipeline_worker.probe import parse_args

    assert python_module(command[:3]) == "pipeline_worker.probe", command
    return parse_args(command[3:])


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


def sandbox_box_job(network: bool = False, **changes: Any) -> BoxJob:
    """A boxed stage as the worker would hand it to a sandbox under `SANDBOX_SETTINGS`."""
    job = BoxJob(
        name="7f3c-execute",
        module="pipeline_worker.sample_box",
        args=("--notebook", f"{BOX_WORKDIR}/notebook.ipynb"),
        workdir=SANDBOX_SETTINGS.data_dir / "pipelines" / "7f3c" / "work",
        env={"PIPELINE_ID": "7f3c", "MLFLOW_TRACKING_URI": f"file://{BOX_WORKDIR}/mlruns"},
        limits=Limits.from_settings(SANDBOX_SETTINGS),
        network=network,
        labels={"mlops-platform/pipeline": "7f3c"},
    )
    return replace(job, **changes)


def sandbox_job_manifest(network: bool = False) -> dict[str, Any]:
    """The Job the Kubernetes sandbox renders for `sandbox_box_job`."""
    return render_job(sandbox_box_job(network), SANDBOX_SETTINGS, image=SANDBOX_IMAGE)
