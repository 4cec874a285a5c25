"""`.env.example` lists every setting with its default: loading it changes nothing."""

from __future__ import annotations

import re

import pytest

from benchmarks.processes import REPO_ROOT
from mlops_core.settings import Settings

ENV_EXAMPLE = REPO_ROOT / ".env.example"
LINE = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def env_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    return alias.choices[0]


def listed() -> dict[str, tuple[bool, str]]:
    """{variable: (commented out, value)} for every assignment in the file."""
    found = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if match := LINE.match(line):
            found[match.group(2)] = (match.group(1) is not None, match.group(3).split("   ")[0])
    return found


def test_every_setting_is_listed() -> None:
    names = {env_name(field) for field in Settings.model_fields}
    missing = sorted(names - listed().keys())
    assert not missing, f".env.example lacks: {missing}"
    unknown = sorted(listed().keys() - names)
    assert not unknown, f".env.example lists variables no setting reads: {unknown}"


def test_only_settings_without_a_fixed_default_are_commented_out() -> None:
    entries = listed()
    for field, info in Settings.model_fields.items():
        commented, _ = entries[env_name(field)]
        no_fixed_default = info.default is None or info.default_factory is not None
        assert commented == no_fixed_default, env_name(field)


def test_loading_it_gives_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for field in Settings.model_fields:
        monkeypatch.delenv(env_name(field), raising=False)
    defaults = Settings(_env_file=None)
    loaded = Settings(_env_file=ENV_EXAMPLE)
    differ = {
        env_name(field): (getattr(loaded, field), getattr(defaults, field))
        for field in Settings.model_fields
        if field != "replica_id" and getattr(loaded, field) != getattr(defaults, field)
    }
    assert not differ, f"value in .env.example differs from the default: {differ}"
