"""`python -m launcher [--only NAME ...]`: start the platform in the foreground."""

from __future__ import annotations

import argparse
import os
import sys

from launcher.readiness import redact
from launcher.services import (
    Plan,
    plan,
    prepare_data_dir,
    redis_password,
    webhook_secret,
    without_secrets,
)
from launcher.supervisor import supervise
from launcher.supervisord_conf import CannotSupervise, SupervisorFiles
from mlops_core.settings import Settings, get_settings
from mlops_core.token_vault import InvalidSecretKey, TokenVault


def banner(settings: Settings, stack: Plan, names: set[str], files: SupervisorFiles) -> str:
    """What is running where, and what to try first."""
    gateway = f"http://localhost:{settings.gateway_port}"
    lines = []
    if "gateway" in names:
        lines.append(f"gateway (REST, webhook, WebSocket)  {gateway}   (API docs: {gateway}/docs)")
    if "mlflow" in names:
        lines.append(f"MLflow UI                           http://localhost:{settings.mlflow_port}")
    if "inference" in names:
        lines.append(
            f"inference gRPC (OIP v2), {settings.replicas} replicas  localhost:{settings.grpc_port}"
        )
        lines.append(
            "replica /health and /metrics       "
            + ", ".join(url.replace("127.0.0.1", "localhost") for url in stack.replica_urls)
        )
    lines.append(f"Redis                               {redact(stack.redis_url)}")
    lines.append(f"data directory                      {settings.data_dir}")
    if stack.secret_file is not None:
        lines.append(
            f"webhook secret (generated; GITHUB_WEBHOOK_SECRET unset)  {stack.secret_file}"
        )
    if stack.key_file is not None:
        lines.append(
            f"token key (generated; MLOPS_SECRET_KEY unset)  {stack.key_file}"
            "   (keep it: stored repository tokens are unreadable without it)"
        )
    lines.append(f"processes and restarts              {files.supervisorctl()} status")
    lines.append(f"logs (one file per process)         {files.logs}")
    if "gateway" in names:
        secret = (
            f'"$(cat {stack.secret_file})"' if stack.secret_file else '"$GITHUB_WEBHOOK_SECRET"'
        )
        lines += [
            "",
            "Try next:",
            f"  curl {gateway}/ready",
            f"  curl -X POST {gateway}/repos -H 'Content-Type: application/json' \\",
            '    -d \'{"github_url": "https://github.com/you/repo", "branch": "main",'
            ' "notebook_path": "notebooks/example_notebook.ipynb"}\'',
            f"  GITHUB_WEBHOOK_SECRET={secret} GATEWAY_URL={gateway} \\",
            "    ./scripts/test_pipeline.sh --repo https://github.com/you/repo",
        ]
    lines.append("Ctrl-C stops everything.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher", description=__doc__)
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="start only these services (redis, mlflow, inference, worker, gateway)",
    )
    args = parser.parse_args(argv)
    settings = get_settings()
    password = redis_password(settings)
    stack = plan(settings, redis_password=password)
    try:
        services = stack.select(args.only) if args.only else stack.services
    except ValueError as exc:
        parser.error(str(exc))
    prepare_data_dir(settings, password)
    secret = webhook_secret(settings, stack.secret_file)
    try:
        # NOTE: made here, before the gateway and the worker start, so both read one key.
        TokenVault.from_settings(settings)
    except InvalidSecretKey as exc:
        parser.error(str(exc))
    secret_values = {"GITHUB_WEBHOOK_SECRET": secret}
    if settings.api_key:
        secret_values["MLOPS_API_KEY"] = settings.api_key
    if settings.secret_key:
        secret_values["MLOPS_SECRET_KEY"] = settings.secret_key
    programs = [s.program(settings.ready_timeout_s, os.environ, secret_values) for s in services]
    files = SupervisorFiles(settings.data_dir)
    checks = [s.ready for s in services if s.ready is not None]
    text = banner(settings, stack, {s.group for s in services}, files)
    try:
        return supervise(
            programs,
            # What every program may see; each program's own variables and secrets are
            # added in its section of supervisord.conf.
            without_secrets(os.environ),
            files,
            checks,
            settings.ready_timeout_s,
            lambda elapsed: f"platform ready in {elapsed:.1f} s\n{text}",
        )
    except CannotSupervise as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    sys.exit(main())
