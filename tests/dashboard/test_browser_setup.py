"""Without Chromium and no way to install it, the dashboard tests fail naming the command."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dashboard import conftest


def test_missing_chromium_without_root_fails_naming_the_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(conftest, "CHROMIUM", tmp_path / "chromium")
    monkeypatch.setattr(conftest.os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.fail.Exception, match="sudo apt-get install -y chromium chromium-d"):
        conftest.ensure_chromium()
