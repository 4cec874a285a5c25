"""A kernel that dies before it answers ran no code of the notebook: the box starts another
once (`pipeline_worker.boxed.notebook.start_kernel`), with a real kernel whose first launch
dies."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipeline_worker.boxed import notebook

FLAKY_LAUNCHER = """
import os, sys
marker = sys.argv[1]
if not os.path.exists(marker):
    open(marker, "w").close()
    sys.exit(1)  # the first launch dies before it answers
os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", *sys.argv[2:]])
"""


@pytest.fixture
def flaky_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kernelspec `flaky` whose first start dies; returns the marker its first start left."""
    launcher = tmp_path / "launcher.py"
    launcher.write_text(FLAKY_LAUNCHER)
    marker = tmp_path / "died-once"
    spec_dir = tmp_path / "jupyter" / "kernels" / "flaky"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, str(launcher), str(marker), "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "flaky", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return marker


def test_a_kernel_that_dies_at_start_is_replaced_once(
    flaky_kernel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manager = notebook.start_kernel("flaky", 30.0, str(tmp_path))
    assert manager is not None, capsys.readouterr().out
    try:
        assert flaky_kernel.exists(), "the first start died"
        assert notebook.kernel_alive(manager)
        assert "the kernel died at start" in capsys.readouterr().out
    finally:
        from jupyter_core.utils import run_sync

        run_sync(manager.shutdown_kernel)(now=True)


def test_a_kernel_that_never_starts_is_an_error_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec_dir = tmp_path / "jupyter" / "kernels" / "dead"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-c", "import sys; sys.exit(1)", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "dead"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    assert notebook.start_kernel("dead", 30.0, str(tmp_path)) is None
    out = capsys.readouterr().out
    assert out.count("the kernel died at start") == 1, "one more try, not more"
    assert '"kind": "error"' in out and "Kernel died before replying" in out


SLOW_LAUNCHER = """
import os, sys, time
time.sleep(2.5)  # a kernel booting on a loaded machine: no heartbeat yet
os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", *sys.argv[1:]])
"""


def test_a_kernel_slow_to_boot_is_waited_for_not_called_dead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    launcher = tmp_path / "slow.py"
    launcher.write_text(SLOW_LAUNCHER)
    spec_dir = tmp_path / "jupyter" / "kernels" / "slow"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, str(launcher), "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "slow"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    manager = notebook.start_kernel("slow", 30.0, str(tmp_path))
    out = capsys.readouterr().out
    assert manager is not None, out
    try:
        assert "died" not in out, out
    finally:
        from jupyter_core.utils import run_sync

        run_sync(manager.shutdown_kernel)(now=True)
