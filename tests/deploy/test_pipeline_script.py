"""scripts/test_pipeline.sh: its signed push body, checked with Python's hmac and the gateway's
own payload parser (`--dry-run`; the real delivery is driven by the end-to-end test)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
from pathlib import Path

from benchmarks.processes import REPO_ROOT
from gateway.github_events import PushEvent
from gateway.repo_urls import normalize_clone_url

SCRIPT = REPO_ROOT / "scripts" / "test_pipeline.sh"
HEADER = "\nX-Hub-Signature-256: "


def dry_run(*args: str, env: dict[str, str], cwd: Path = REPO_ROOT) -> tuple[bytes, str]:
    """The exact body the script would send, and its signature header value."""
    base = {k: v for k, v in os.environ.items() if k not in ("GITHUB_WEBHOOK_SECRET", "REPO_URL")}
    done = subprocess.run(
        ["bash", str(SCRIPT), *args, "--dry-run"],
        capture_output=True,
        env={**base, **env},
        cwd=cwd,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr.decode()
    body, _, signature = done.stdout.decode().partition(HEADER)
    return body.encode(), signature.strip()


def expected(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_the_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], timeout=10).returncode == 0


def test_signature_matches_python_hmac_and_the_gateway_reads_the_push() -> None:
    secret = "a secret with spaces, 'quotes' and $dollars"
    body, signature = dry_run(
        "--repo",
        "https://github.com/Acme/iris-training.git",
        "--branch",
        "dev",
        "--notebook",
        'notebooks/odd "name".ipynb',
        "--commit",
        "9fceb02d0ae598e95dc970b74767f19372d61af8",
        env={"GITHUB_WEBHOOK_SECRET": secret},
    )
    assert signature == expected(secret, body)
    event = PushEvent.parse(json.loads(body))
    assert event.full_name == "acme/iris-training"
    assert normalize_clone_url("https://github.com/acme/iris-training") in event.clone_urls
    assert event.branch == "dev"
    assert event.head_sha == "9fceb02d0ae598e95dc970b74767f19372d61af8"
    assert event.changed_paths == {'notebooks/odd "name".ipynb'}
    assert not event.deleted


def test_a_local_repository_and_the_secret_make_run_generated(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "README").write_text("x\n")
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    data = tmp_path / "data"
    data.mkdir()
    (data / "webhook_secret").write_text("generated-by-make-run\n")

    body, signature = dry_run(env={"REPO_URL": str(repo), "MLOPS_DATA_DIR": str(data)})
    assert signature == expected("generated-by-make-run", body)
    event = PushEvent.parse(json.loads(body))
    assert event.head_sha == head
    assert normalize_clone_url(f"file://{repo}") in event.clone_urls
    assert event.changed_paths == {"notebooks/example_notebook.ipynb"}


def test_without_a_secret_it_refuses(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(SCRIPT), "--repo", "https://github.com/a/b", "--commit", "c", "--dry-run"],
        capture_output=True,
        text=True,
        env={
            **{k: v for k, v in os.environ.items() if k != "GITHUB_WEBHOOK_SECRET"},
            "MLOPS_DATA_DIR": str(tmp_path),
        },
        timeout=30,
    )
    assert done.returncode == 2
    assert "GITHUB_WEBHOOK_SECRET" in done.stderr
