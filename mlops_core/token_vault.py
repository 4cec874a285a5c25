"""Repository tokens at rest: sealed with Fernet under the platform's key, opened only for the
one git command that needs them.

The key is `MLOPS_SECRET_KEY` or, when that is unset, `<data_dir>/secret.key`, created with
mode 0600 on first use. The gateway seals, the pipeline worker opens: both need the same key.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from mlops_core.errors import TokenUnreadable
from mlops_core.settings import Settings

KEY_FILE = "secret.key"
SEALED_PREFIX = "fernet:"
"""Marks a sealed value. A stored value without it is a plain-text token written by an older
version: still usable, and sealed in place when the gateway starts."""


class InvalidSecretKey(ValueError):
    """The configured key is not a Fernet key: the service refuses to start."""


def is_sealed(stored: str) -> bool:
    return stored.startswith(SEALED_PREFIX)


class TokenVault:
    """Seals and opens repository tokens with one Fernet key."""

    def __init__(self, key: bytes | str, source: str) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError):
            raise InvalidSecretKey(
                f"{source} is not a Fernet key (32 url-safe base64-encoded bytes); make one with "
                '`python -c "from cryptography.fernet import Fernet; '
                'print(Fernet.generate_key().decode())"`'
            ) from None
        self.source = source
        """Where the key came from, for messages (never the key itself)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVault:
        """The vault of `MLOPS_SECRET_KEY`, else of the data directory's key file."""
        if settings.secret_key:
            return cls(settings.secret_key, "MLOPS_SECRET_KEY")
        path = settings.data_dir / KEY_FILE
        return cls(read_or_create_key(path), str(path))

    def seal(self, token: str) -> str:
        return SEALED_PREFIX + self._fernet.encrypt(token.encode()).decode()

    def open(self, stored: str) -> str:
        """The token in `stored`; a legacy plain-text value is returned as it is."""
        if not is_sealed(stored):
            return stored
        try:
            return self._fernet.decrypt(stored.removeprefix(SEALED_PREFIX)).decode()
        except InvalidToken:
            raise TokenUnreadable(
                f"the repository's stored token cannot be decrypted with the key from "
                f"{self.source}: the key changed since the token was stored. Restore the "
                "key, or delete the repository and register it again with its token "
                "(the gateway and the pipeline worker must share one key)"
            ) from None


def read_or_create_key(path: Path) -> bytes:
    """The key kept in `path`, made (mode 0600) if there is none yet.

    NOTE: written to a private temporary file, then linked into place, so a gateway and a
    worker starting together agree on one key and neither ever reads a half-written file.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(Fernet.generate_key() + b"\n")
            os.link(draft, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            draft.unlink(missing_ok=True)
    return path.read_bytes().strip()
