"""The documentation holds: the configuration page matches the settings, links (and their
headings) resolve, and the README's package table matches what each package imports."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import Field

from benchmarks.processes import REPO_ROOT
from launcher.services import SECRET_ENV
from mlops_core.settings import Settings, _env

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")

MAY_IMPORT = {
    "mlops_core": {"mlops_core"},
    "gateway": {"gateway", "mlops_core"},
    "pipeline_worker": {"pipeline_worker", "mlops_core"},
    "inference": {"inference", "mlops_core"},
    "launcher": {"launcher", "mlops_core", "inference.cpus"},
    "cli": {"cli"},
}
"""The README's package table: what each package may import of ours."""
OURS = {
    "mlops_core",
    "cli",
    "gateway",
    "pipeline_worker",
    "inference",
    "launcher",
    "benchmarks",
    "tests",
}


def config_reference() -> ModuleType:
    path = REPO_ROOT / "scripts" / "config_reference.py"
    spec = importlib.util.spec_from_file_location("config_reference", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_page_is_generated_from_the_settings() -> None:
    reference = config_reference()
    assert reference.PAGE.read_text() == reference.render(), (
        "docs/configuration.md is out of date with mlops_core/settings.py; regenerate it with "
        f"`make docs` (or `{reference.COMMAND}`)"
    )


def test_no_secret_default_is_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    class WithDefaults(Settings):
        github_webhook_secret: str = Field(
            "hook-sentinel", validation_alias=_env("GITHUB_WEBHOOK_SECRET")
        )
        api_key: str = Field("key-sentinel", validation_alias=_env("MLOPS_API_KEY"))
        secret_key: str | None = Field("fernet-sentinel", validation_alias=_env("MLOPS_SECRET_KEY"))
        redis_url: str | None = Field(
            "redis://:password-sentinel@redis:6379/0", validation_alias=_env("REDIS_URL")
        )

    reference = config_reference()
    monkeypatch.setattr(reference, "Settings", WithDefaults)
    page = reference.render()
    for sentinel in ("hook-sentinel", "key-sentinel", "fernet-sentinel", "password-sentinel"):
        assert sentinel not in page
    assert "`redis://***@redis:6379/0`" in page
    for name in SECRET_ENV:
        assert reference.is_secret(name), f"{name} is a secret the launcher guards"


def links(page: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", page.read_text()))
    return LINK.findall(text)


def anchors(page: Path) -> set[str]:
    """The anchors GitHub makes of a page's headings: lower case, punctuation dropped."""
    headings = re.findall(r"^#+\s+(.+)$", FENCE.sub("", page.read_text()), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def resolves(page: Path, target: str) -> bool:
    path, _, anchor = target.partition("#")
    linked = page.parent / path if path else page
    if not linked.exists():
        return False
    return not anchor or linked.suffix != ".md" or anchor in anchors(linked)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_point_to_files(page: Path) -> None:
    relative = [t for t in links(page) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]
    broken = [target for target in relative if not resolves(page, target)]
    assert not broken, f"{page.relative_to(REPO_ROOT)} links to missing files or headings: {broken}"


def imported(package: str) -> set[str]:
    """Every module of ours that `package` imports, as written in its import statements."""
    found = set()
    for path in (REPO_ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
    return {name for name in found if name.split(".")[0] in OURS}


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_packages_import_what_the_readme_says(package: str) -> None:
    allowed = MAY_IMPORT[package]
    wrong = sorted(
        name
        for name in imported(package)
        if not any(name == ok or name.startswith(f"{ok}.") for ok in allowed)
    )
    assert not wrong, f"{package} imports {wrong}; README.md's package table says it may not"
