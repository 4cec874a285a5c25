"""The `mlops` commands: each parses its arguments, makes one or two gateway calls through
`cli.client` and shows the answer through `cli.output`."""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from cli import output
from cli.client import DEFAULT_GATEWAY, END_OK, Gateway, GatewayError

F = TypeVar("F", bound=Callable[..., Any])
STATUSES = ["queued", "cloning", "validating", "executing", "converting", "verifying",
            "registering", "deploying", "succeeded", "failed", "cancelled"]  # fmt: skip


class Call:
    """What every command gets: the gateway and how to show answers."""

    def __init__(self, gateway: Gateway, as_json: bool) -> None:
        self.gateway = gateway
        self.as_json = as_json


def gateway_command(group: click.Group, name: str | None = None) -> Callable[[F], click.Command]:
    """A command of `group` with `-o`, `--gateway` and the API key from `MLOPS_API_KEY`; it
    receives a `Call`, and a GatewayError becomes its message on stderr and the exit code."""

    def decorate(function: F) -> click.Command:
        @functools.wraps(function)
        def run(output_format: str, gateway_url: str, **kwargs: Any) -> None:
            gateway = Gateway(gateway_url, os.environ.get("MLOPS_API_KEY") or None)
            try:
                function(Call(gateway, output_format == "json"), **kwargs)
            except GatewayError as exc:
                click.echo(f"error: {exc.message}", err=True)
                sys.exit(exc.exit_code)
            finally:
                gateway.close()

        run = click.option(
            "-o",
            "--output",
            "output_format",
            type=click.Choice(["table", "json"]),
            default="table",
            show_default=True,
            help="Tables for people, the server's JSON for programs.",
        )(run)
        run = click.option(
            "--gateway",
            "gateway_url",
            envvar="MLOPS_GATEWAY_URL",
            default=DEFAULT_GATEWAY,
            show_default=True,
            help="The gateway's address (MLOPS_GATEWAY_URL).",
        )(run)
        return group.command(name)(run)

    return decorate


@click.group()
def mlops() -> None:
    """The MLOps platform from the command line. The API key, if the gateway has one, is read
    from MLOPS_API_KEY."""


def main() -> None:
    mlops()


# --- system ------------------------------------------------------------------------------


@gateway_command(mlops)
def status(call: Call) -> None:
    """Whether the platform is ready, component by component; exits 1 when it is not."""
    try:
        show_ready(call, call.gateway.get("/ready"))
    except GatewayError as exc:
        # NOTE: a platform not ready answers 503 with every check: show them, then the error.
        if isinstance(exc.body, dict) and "checks" in exc.body:
            show_ready(call, {"status": "not ready", **exc.body})
        raise


def show_ready(call: Call, ready: dict[str, Any]) -> None:
    if call.as_json:
        output.print_json(ready)
    else:
        title = f"gateway {call.gateway.url}: {ready['status']}"
        output.table(title, ["component", "state"], ready["checks"].items())


# --- repositories ------------------------------------------------------------------------


@mlops.group()
def repos() -> None:
    """Register, list and remove the git repositories whose notebook the platform trains."""


REPO_COLUMNS = ["id", "full_name", "branch", "notebook_path", "has_token", "created_at"]


@gateway_command(repos, "add")
@click.argument("url")
@click.option("--notebook", required=True, help="The notebook's path in the repository.")
@click.option("--branch", default="main", show_default=True)
@click.option(
    "--token-env",
    metavar="VAR",
    help="Name of an environment variable holding a GitHub token for a private repository.",
)
def repos_add(call: Call, url: str, notebook: str, branch: str, token_env: str | None) -> None:
    """Register the repository at URL (GitHub, or a local path when the platform allows it)."""
    body: dict[str, Any] = {"github_url": url, "branch": branch, "notebook_path": notebook}
    if token_env:
        # NOTE: from the environment, never argv: a command line is visible to every user.
        if not os.environ.get(token_env):
            raise click.UsageError(f"--token-env {token_env}: the variable is not set")
        body["github_token"] = os.environ[token_env]
    show_records(call, call.gateway.post("/repos", body), REPO_COLUMNS, "registered")


@gateway_command(repos, "list")
def repos_list(call: Call) -> None:
    """Every registered repository."""
    show_records(call, call.gateway.get("/repos"), REPO_COLUMNS, "repositories")


@gateway_command(repos, "rm")
@click.argument("repo_id", type=int)
def repos_rm(call: Call, repo_id: int) -> None:
    """Unregister repository REPO_ID (its pipelines stay)."""
    call.gateway.request("DELETE", f"/repos/{repo_id}")
    if call.as_json:
        output.print_json({"deleted": repo_id})
    else:
        output.console.print(f"repository {repo_id} removed")


# --- pipelines ---------------------------------------------------------------------------

PIPELINE_COLUMNS = ["id", "status", "model", "commit", "duration_s", "created_at"]


def pipeline_row(pipeline: dict[str, Any]) -> list[Any]:
    """The columns a person scans; `-o json` has every field."""
    status = pipeline["status"]
    if status == "failed" and pipeline["stage"]:
        status = f"failed at {pipeline['stage']}"
    model = pipeline["model_name"] and f"{pipeline['model_name']}:{pipeline['model_version']}"
    return [
        pipeline["id"],
        status,
        model,
        pipeline["commit_sha"][:8],
        pipeline["duration_s"] and round(pipeline["duration_s"], 1),
        pipeline["created_at"][:19].replace("T", " "),
    ]


@gateway_command(mlops)
@click.argument("repo_id", type=int)
def trigger(call: Call, repo_id: int) -> None:
    """Run repository REPO_ID's pipeline on its branch's head now; prints the pipeline."""
    pipeline = call.gateway.post(f"/repos/{repo_id}/trigger")
    if call.as_json:
        output.print_json(pipeline)
        return
    output.table("pipeline started", PIPELINE_COLUMNS, [pipeline_row(pipeline)])
    if pipeline.get("note"):
        output.console.print(pipeline["note"])


@gateway_command(mlops)
@click.option("--repo", "repo_id", type=int, help="Only this repository's pipelines.")
@click.option("--status", "status_", type=click.Choice(STATUSES), help="Only in this status.")
@click.option("--page", type=int, default=1, show_default=True)
@click.option("--size", type=int, default=20, show_default=True)
def pipelines(call: Call, repo_id: int | None, status_: str | None, page: int, size: int) -> None:
    """Pipelines, newest first."""
    found = call.gateway.get(
        "/pipelines", repository_id=repo_id, status=status_, page=page, size=size
    )
    if call.as_json:
        output.print_json(found)
        return
    title = f"pipelines (page {found['page']}, {found['total']} in all)"
    output.table(title, PIPELINE_COLUMNS, (pipeline_row(p) for p in found["items"]))


@gateway_command(mlops)
@click.argument("pipeline_id")
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Follow the live log until the pipeline ends; exit 0 if it succeeded, 1 otherwise.",
)
def logs(call: Call, pipeline_id: str, follow: bool) -> None:
    """Pipeline PIPELINE_ID's log (`-o json`: one JSON entry a line)."""

    def show(entry: dict[str, Any]) -> None:
        print(json.dumps(entry) if call.as_json else entry["line"], flush=True)

    if not follow:
        for entry in call.gateway.get(f"/pipelines/{pipeline_id}/logs")["lines"]:
            show(entry)
        return
    end = call.gateway.follow_logs(pipeline_id, show)
    if call.as_json:
        print(json.dumps({"end": end}), flush=True)
    else:
        click.echo(f"pipeline {pipeline_id} {end}", err=end != END_OK)
    if end != END_OK:
        sys.exit(1)


# --- models ------------------------------------------------------------------------------


@gateway_command(mlops)
def models(call: Call) -> None:
    """The served models: active, warm and candidate versions, replicas."""
    found = call.gateway.get("/models")
    if call.as_json:
        output.print_json(found)
        return
    rows = [
        (
            m["name"],
            m["active_version"],
            m["warm_versions"],
            m["candidate"] and f"{m['candidate']['version']} ({m['candidate']['weight']:.0%})",
            [v["version"] for v in m["versions"]],
            [f"{r['replica_id']}: {r['active']}" for r in m["replicas"]],
        )
        for m in found["models"]
    ]
    columns = ["model", "active", "warm", "candidate", "versions", "replicas"]
    output.table("models", columns, rows)
    if not found["registry_reachable"]:
        output.console.print("MLflow's registry did not answer: versions may be incomplete")


@gateway_command(mlops)
@click.argument("model")
@click.option("--data", "data_json", metavar="JSON", help="Rows as JSON: [[5.1, 3.5, 1.4, 0.2]].")
@click.option(
    "--csv",
    "csv_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Rows as CSV (a header line is skipped).",
)
def predict(call: Call, model: str, data_json: str | None, csv_file: Path | None) -> None:
    """Predict with MODEL's served version. Rows come from --data, --csv, or standard input
    (JSON or CSV)."""
    if data_json is not None and csv_file is not None:
        raise click.UsageError("give --data or --csv, not both")
    if data_json is not None:
        rows = json_rows(data_json)
    elif csv_file is not None:
        rows = csv_rows(csv_file.read_text())
    else:
        text = sys.stdin.read()
        rows = json_rows(text) if text.lstrip()[:1] in ("[", "{") else csv_rows(text)
    answer = call.gateway.post(f"/models/{model}/predict", {"data": rows})
    if call.as_json:
        output.print_json(answer)
        return
    probabilities = answer.get("probabilities") or [None] * len(answer["predictions"])
    output.table(
        f"{answer['model']} version {answer['version']}",
        ["row", "prediction", "probabilities"],
        (
            (i, prediction, p and [f"{x:.3f}" for x in p])
            for i, (prediction, p) in enumerate(
                zip(answer["predictions"], probabilities, strict=True)
            )
        ),
    )


def json_rows(text: str) -> list[Any]:
    """`[[...], ...]`, or a whole request body `{"data": [[...], ...]}`."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.UsageError(f"rows are not JSON: {exc}") from exc
    rows = value.get("data") if isinstance(value, dict) else value
    if not isinstance(rows, list):
        raise click.UsageError('rows must be a JSON list of lists, or {"data": [[...], ...]}')
    return rows


def csv_rows(text: str) -> list[list[float]]:
    """Numbers by row; a first line that is not numbers is a header and skipped."""
    rows: list[list[float]] = []
    for number, line in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not line or not "".join(line).strip():
            continue
        try:
            rows.append([float(v) for v in line])
        except ValueError as exc:
            if number == 1:
                continue
            raise click.UsageError(f"CSV line {number} is not numbers: {exc}") from exc
    if not rows:
        raise click.UsageError("no rows given")
    return rows


@gateway_command(mlops)
@click.argument("model")
@click.argument("version")
def rollback(call: Call, model: str, version: str) -> None:
    """Serve MODEL's VERSION again on every replica (answers once they all do)."""
    answer = call.gateway.post(f"/models/{model}/rollback", {"version": version})
    if call.as_json:
        output.print_json(answer)
        return
    output.console.print(
        f"{answer['model']}: version {answer['active_version']} serves"
        f" (was {answer['previous_version']}) on {len(answer['replicas'])} replicas"
    )


# --- rollouts ----------------------------------------------------------------------------


@mlops.group()
def rollout() -> None:
    """The model's running rollout (canary or shadow): its figures, promote or abort it."""


def show_rollout(call: Call, record: dict[str, Any]) -> None:
    if call.as_json:
        output.print_json(record)
        return
    steps, index = record["steps"], record["step"]
    step = (
        f"{index + 1} of {len(steps)}: candidate at {steps[index]['weight']:.0%}"
        if index < len(steps)
        else index
    )
    keys = ["model", "strategy", "state", "champion", "candidate", "reason", "started_at",
            "finished_at", "live"]  # fmt: skip
    shown = {**record, "step": step, "live": live_summary(record.get("live"))}
    output.fields(f"rollout {record['id']}", shown, ["step", *keys])
    if record.get("decisions"):
        output.table(
            "decisions",
            ["at", "action", "reason"],
            ((d.get("at"), d.get("action"), d.get("reason")) for d in record["decisions"]),
        )


def command_rollout(call: Call, model: str, command: str) -> None:
    record = call.gateway.post(f"/models/{model}/rollouts/current/{command}")
    show_rollout(call, record)
    if record["state"] == "running" and not call.as_json:
        # NOTE: the gateway answers 202 when the rollout's driver has not acted within its wait.
        output.console.print(f"asked; `mlops rollout status {model}` shows when it is done")


def live_summary(live: dict[str, Any] | None) -> str | None:
    """The current step's figures, one line per version and one for the agreement."""
    if not live:
        return None
    lines = [
        f"{side} {figures.get('version')}: {figures.get('requests')} requests,"
        f" {figures.get('errors')} errors, p99 {output.cell(figures.get('p99_ms'))} ms"
        for side in ("champion", "candidate")
        if isinstance(figures := live.get(side), dict)
    ]
    if isinstance(agreement := live.get("agreement"), dict):
        lines.append(f"agreement: {agreement.get('agreed')} of {agreement.get('compared')}")
    return "\n".join(lines)


@gateway_command(rollout, "status")
@click.argument("model")
def rollout_status(call: Call, model: str) -> None:
    """MODEL's running rollout, with the current step's figures."""
    show_rollout(call, call.gateway.get(f"/models/{model}/rollouts/current"))


@gateway_command(rollout, "promote")
@click.argument("model")
def rollout_promote(call: Call, model: str) -> None:
    """Promote MODEL's candidate now, whatever its figures say."""
    command_rollout(call, model, "promote")


@gateway_command(rollout, "abort")
@click.argument("model")
def rollout_abort(call: Call, model: str) -> None:
    """Take MODEL's candidate away now; the champion serves every request."""
    command_rollout(call, model, "abort")


def show_records(
    call: Call, records: dict[str, Any] | list[dict[str, Any]], columns: list[str], title: str
) -> None:
    if call.as_json:
        output.print_json(records)
        return
    rows = records if isinstance(records, list) else [records]
    output.table(title, columns, ([r.get(c) for c in columns] for r in rows))
