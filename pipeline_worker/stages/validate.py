"""Validate stage: check the notebook contract before anything runs.

The notebook must parse, carry every required tag (all missing ones are named at once), and its
`mlops:config` cell must assign `MODEL_NAME` and `VERSION` as literals, read here with `ast`
without executing anything.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from mlops_core.db import PipelineStatus
from mlops_core.errors import PipelineError
from mlops_core.rollout_policy import PolicyError, RolloutPolicy, parse_policy

STAGE = PipelineStatus.VALIDATING
CONFIG_TAG = "mlops:config"
REQUIRED_TAGS = ("mlops:config", "mlops:preprocessing", "mlops:training", "mlops:export")
# Safe in a URL path, a file name and an MLflow registered-model name.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class NotebookConfig:
    model_name: str
    version: str
    """The notebook's own `VERSION` literal (not the registry version)."""
    rollout: RolloutPolicy | None = None
    """The notebook's `ROLLOUT = {...}` literal: wins over the model's policy for this run."""


def notebook_file(workdir: Path, notebook_path: str) -> Path:
    """The notebook inside the checkout; paths that leave it are refused."""
    path = (workdir / notebook_path).resolve()
    if not path.is_relative_to(workdir.resolve()):
        raise PipelineError(STAGE, f"notebook path {notebook_path!r} leaves the repository")
    if not path.is_file():
        raise PipelineError(STAGE, f"notebook {notebook_path!r} not found in the commit")
    return path


def cell_tags(cell: Any) -> list[str]:
    tags = cell.get("metadata", {}).get("tags", [])
    return [t for t in tags if isinstance(t, str)]


def validate(path: Path) -> NotebookConfig:
    """Check the notebook at `path`; raise PipelineError naming every problem found."""
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:
        raise PipelineError(STAGE, f"{path.name} is not a valid notebook: {exc}") from None

    present = {tag for cell in nb.cells for tag in cell_tags(cell)}
    missing = [tag for tag in REQUIRED_TAGS if tag not in present]
    if missing:
        raise PipelineError(
            STAGE,
            f"missing required cell tags: {', '.join(missing)} "
            "(set them in Jupyter: View > Cell Toolbar > Tags)",
        )

    config_cells = [c for c in nb.cells if CONFIG_TAG in cell_tags(c)]
    if config_cells[0].cell_type != "code":
        raise PipelineError(STAGE, f"the {CONFIG_TAG} cell must be a code cell")
    values = _literal_assignments(
        "\n".join(c.source for c in config_cells if c.cell_type == "code")
    )
    problems = [
        f"{name} must be assigned a literal in the {CONFIG_TAG} cell"
        for name in ("MODEL_NAME", "VERSION")
        if name not in values
    ]
    if problems:
        raise PipelineError(STAGE, "; ".join(problems))
    model_name, version = values["MODEL_NAME"], values["VERSION"]
    if not isinstance(model_name, str) or not MODEL_NAME.match(model_name):
        raise PipelineError(
            STAGE,
            f"MODEL_NAME {model_name!r} is not a valid model name: use letters, digits, '.', "
            "'_' and '-', starting with a letter or digit, at most 128 characters",
        )
    if not isinstance(version, str | int | float) or isinstance(version, bool):
        raise PipelineError(STAGE, f"VERSION {version!r} must be a string or a number")
    rollout = None
    if "ROLLOUT" in values:
        if not isinstance(values["ROLLOUT"], dict):
            raise PipelineError(
                STAGE, "ROLLOUT must be a dict literal, e.g. {'strategy': 'canary'}"
            )
        try:
            rollout = parse_policy(values["ROLLOUT"])
        except PolicyError as exc:
            raise PipelineError(STAGE, f"ROLLOUT in the {CONFIG_TAG} cell: {exc}") from None
    return NotebookConfig(model_name=model_name, version=str(version), rollout=rollout)


def _literal_assignments(source: str) -> dict[str, Any]:
    """Top-level `NAME = <literal>` assignments; IPython magics are blanked out first."""
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError as exc:
        raise PipelineError(
            STAGE, f"the {CONFIG_TAG} cell has a syntax error on line {exc.lineno}: {exc.msg}"
        ) from None
    values: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name):
                try:
                    values[target.id] = ast.literal_eval(value)
                except ValueError:
                    values.pop(target.id, None)
    return values
