"""grpc core's experiments a replica turns off, applied before grpc is first loaded."""

from __future__ import annotations

import os
import subprocess
import sys

from benchmarks.processes import REPO_ROOT
from inference.grpc_core import SERVER_EXPERIMENTS, apply_server_experiments


def test_the_default_is_applied_and_an_explicit_value_wins(monkeypatch) -> None:
    monkeypatch.delenv("GRPC_EXPERIMENTS", raising=False)
    apply_server_experiments()
    assert os.environ["GRPC_EXPERIMENTS"] == SERVER_EXPERIMENTS
    monkeypatch.setenv("GRPC_EXPERIMENTS", "")
    apply_server_experiments()
    assert os.environ["GRPC_EXPERIMENTS"] == ""


def test_the_entry_point_loads_grpc_only_after_applying_them() -> None:
    """grpc core reads GRPC_EXPERIMENTS once, when loaded: an import of grpc at the top of
    the entry point (directly or through another module) would silently ignore the setting."""
    code = "import sys, inference.__main__; print([m for m in sys.modules if m[:4] == 'grpc'])"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    assert out.stdout.strip() == "[]"
