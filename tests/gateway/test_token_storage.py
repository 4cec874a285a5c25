"""Repository tokens at rest: a real gateway seals them in its real SQLite database, never
shows them, opens them for `git ls-remote`, and the worker's clone stage opens them to fetch
from a Git host that refuses requests without the token."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from mlops_core.db import Repository, make_engine, make_session_factory, session_scope
from mlops_core.errors import PipelineError, TokenUnreadable
from mlops_core.settings import Settings
from mlops_core.token_vault import (
    KEY_FILE,
    InvalidSecretKey,
    TokenVault,
    read_or_create_key,
)
from pipeline_worker import records
from pipeline_worker.stages.clone import clone
from tests.conftest import new_redis_db
from tests.gateway.conftest import (
    Gateway,
    gateway_env,
    launch_gateway,
    make_local_repo,
    run_gateway_briefly,
)
from tests.support.git_http import GitHost, basic_credentials, git_host

TOKEN = "ghp_sealedAtRest0123456789abcdefABCDEF"
LEGACY_TOKEN = "ghp_legacyPlainText0123456789abcdefXYZ"
NOTEBOOK_PATH = "notebooks/train.ipynb"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHost]:
    """`<host.url>/acme/private`, readable only with TOKEN."""
    root = tmp_path_factory.mktemp("git-host")
    repo = make_local_repo(root, "private")
    (root / "srv" / "acme").mkdir(parents=True)
    repo.bare.rename(root / "srv" / "acme" / "private")
    with git_host(root / "srv", TOKEN) as served:
        yield served


def files_holding(root: Path, secrets: list[str]) -> list[str]:
    """Every file under `root` whose bytes contain one of `secrets`."""
    needles = [s.encode() for s in secrets]
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            data = path.read_bytes()
            found += [f"{path}: {n.decode()}" for n in needles if n in data]
    return found


def start_gateway(run_dir: Path, name: str, data_dir: Path, redis_url: str, host: GitHost, **env):
    return launch_gateway(
        run_dir,
        name,
        gateway_env(data_dir, new_redis_db(redis_url), GITHUB_BASE_URL=host.url, **env),
    )


def worker_settings(data_dir: Path, host: GitHost, **values: Any) -> Settings:
    return Settings(_env_file=None, data_dir=data_dir, github_base_url=host.url, **values)


def register(gateway: Gateway, token: str) -> dict:
    with gateway.client() as api:
        response = api.post(
            "/repos",
            json={
                "github_url": f"{gateway.env['GITHUB_BASE_URL']}/acme/private",
                "notebook_path": NOTEBOOK_PATH,
                "github_token": token,
            },
        )
    assert response.status_code == 201, response.text
    return response.json()


async def test_a_token_is_sealed_at_rest_never_shown_and_still_used(
    run_dir: Path, redis_url: str, host: GitHost, tmp_path: Path
):
    data_dir = tmp_path / "data"
    gateway = start_gateway(run_dir, "gateway-tokens", data_dir, redis_url, host)
    try:
        repo = register(gateway, TOKEN)
        assert repo["has_token"] is True
        with gateway.client() as api:
            shown = [api.get("/repos"), api.get(f"/repos/{repo['id']}")]
            triggered = api.post(f"/repos/{repo['id']}/trigger")
            assert triggered.status_code == 202, triggered.text
            shown += [triggered, api.get(f"/pipelines/{triggered.json()['id']}")]
        for response in shown:
            assert TOKEN not in response.text and "fernet:" not in response.text
        # The host answers only requests carrying the token: `ls-remote` got the opened one.
        assert host.authorized and all(host.authorized)

        job = records.load(
            make_session_factory(make_engine(gateway.database_url)), shown[-1].json()["id"]
        )
        assert job is not None and job.github_token is not None
        assert job.github_token.startswith("fernet:") and TOKEN not in job.github_token

        lines: list[str] = []

        async def log(line: str) -> None:
            lines.append(line)

        cloned = await clone(
            job.github_url or "",
            job.branch,
            job.commit_sha,
            tmp_path / "checkout",
            token=job.github_token,
            settings=worker_settings(data_dir, host),
            log=log,
        )
        assert cloned.commit_sha == job.commit_sha
        assert (tmp_path / "checkout" / NOTEBOOK_PATH).is_file()
        assert not files_holding(tmp_path / "checkout" / ".git", [TOKEN])
        assert TOKEN not in "\n".join(lines)

        key_file = data_dir / KEY_FILE
        assert key_file.stat().st_mode & 0o777 == 0o600
        # Every file the platform keeps, the live SQLite write-ahead log included.
        assert (data_dir / "gateway.db-wal").exists()
        assert files_holding(data_dir, [TOKEN, basic_credentials(TOKEN)]) == []
        assert TOKEN not in gateway.process.log_tail(1_000_000)
    finally:
        gateway.process.stop()
    assert files_holding(data_dir, [TOKEN, basic_credentials(TOKEN)]) == []

    # Another key cannot open it: the worker fails at cloning, saying what to do.
    other_key = Fernet.generate_key().decode()
    with pytest.raises(PipelineError) as caught:
        await clone(
            job.github_url or "",
            job.branch,
            job.commit_sha,
            tmp_path / "other",
            token=job.github_token,
            settings=worker_settings(data_dir, host, secret_key=other_key),
            log=log,
        )
    assert caught.value.stage == "cloning"
    assert "cannot be decrypted with the key from MLOPS_SECRET_KEY" in caught.value.message

    # ... and the gateway answers 409, not 500, when asked to resolve the branch with it.
    restarted = start_gateway(
        run_dir, "gateway-tokens-rekeyed", data_dir, redis_url, host, MLOPS_SECRET_KEY=other_key
    )
    try:
        with restarted.client() as api:
            response = api.post(f"/repos/{repo['id']}/trigger")
        assert response.status_code == 409, response.text
        assert "register it again with its token" in response.json()["detail"]
        assert other_key not in restarted.process.log_tail(1_000_000)
    finally:
        restarted.process.stop()


def test_plain_text_tokens_of_an_older_version_are_sealed_when_the_gateway_starts(
    run_dir: Path, redis_url: str, host: GitHost, tmp_path: Path
):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    database_url = f"sqlite:///{data_dir / 'gateway.db'}"
    engine = make_engine(database_url)
    with session_scope(make_session_factory(engine)) as session:
        session.add(
            Repository(
                github_url=f"{host.url}/acme/private",
                full_name="acme/private",
                branch="main",
                notebook_path=NOTEBOOK_PATH,
                github_token=TOKEN,
            )
        )
    engine.dispose()
    assert files_holding(data_dir, [TOKEN])  # what an older version left behind

    gateway = start_gateway(run_dir, "gateway-legacy-tokens", data_dir, redis_url, host)
    try:
        assert "sealed 1 repository tokens" in gateway.process.log_tail(100_000)
        with session_scope(gateway.sessions()) as session:
            (stored,) = session.scalars(select(Repository.github_token)).all()
        assert stored is not None and stored.startswith("fernet:")
        assert files_holding(data_dir, [TOKEN]) == []
        with gateway.client() as api:
            (repo,) = api.get("/repos").json()
            assert api.post(f"/repos/{repo['id']}/trigger").status_code == 202
    finally:
        gateway.process.stop()


def test_the_key_file_is_private_kept_and_shared(tmp_path: Path):
    path = tmp_path / "data" / KEY_FILE
    key = read_or_create_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_or_create_key(path) == key
    assert [p.name for p in path.parent.iterdir()] == [KEY_FILE]  # no draft left behind

    settings = Settings(_env_file=None, data_dir=tmp_path / "data")
    sealed = TokenVault.from_settings(settings).seal(TOKEN)
    assert sealed.startswith("fernet:") and TOKEN not in sealed
    assert TokenVault.from_settings(settings).open(sealed) == TOKEN
    assert TokenVault.from_settings(settings).open(LEGACY_TOKEN) == LEGACY_TOKEN

    given = Fernet.generate_key().decode()
    configured = Settings(_env_file=None, data_dir=tmp_path / "other", secret_key=given)
    assert TokenVault.from_settings(configured).source == "MLOPS_SECRET_KEY"
    assert not (tmp_path / "other").exists()
    with pytest.raises(TokenUnreadable, match="key from MLOPS_SECRET_KEY"):
        TokenVault.from_settings(configured).open(sealed)


def test_a_malformed_key_is_refused_at_start_without_being_echoed(tmp_path: Path, redis_url: str):
    with pytest.raises(InvalidSecretKey, match="not a Fernet key"):
        TokenVault("not-a-key", "MLOPS_SECRET_KEY")
    bad_key = "short-but-secret-value"
    env = {**os.environ, **gateway_env(tmp_path, redis_url, MLOPS_SECRET_KEY=bad_key)}
    done = run_gateway_briefly(env)
    assert done.returncode == 2
    assert "gateway refuses to start: MLOPS_SECRET_KEY is not a Fernet key" in done.stderr
    assert bad_key not in done.stderr + done.stdout
