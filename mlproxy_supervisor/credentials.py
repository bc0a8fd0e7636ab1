"""The Jupyter token: generated on first start, kept in a 0600 file, never put in argv or logs."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from .files import write_atomically

TOKEN_ENV = "JUPYTER_TOKEN"  # honoured once by `mlproxy up` (containers), then stored in the file


class CredentialError(Exception):
    pass


def ensure_token(path: Path, provided: str | None = None) -> str:
    """Return the token stored at ``path``, creating it (0600) from ``provided`` or at random."""
    if provided is not None:
        provided = provided.strip()
        if len(provided) < 16:
            raise CredentialError(f"${TOKEN_ENV} is too short: use at least 16 characters")
        if not path.exists() or read_token(path) != provided:
            write_private(path, provided)
        return provided
    if path.exists():
        return read_token(path)
    token = secrets.token_hex(24)
    write_private(path, token)
    return token


def read_token(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        token = path.read_text().strip()
    except OSError as error:
        raise CredentialError(f"cannot read the token file {path}: {error.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and path.owner() == _current_user():
        # Ours and too open (copied by hand, restored from a backup): tighten it.
        path.chmod(0o600)
    if not token:
        raise CredentialError(f"the token file {path} is empty: delete it to generate a new token")
    return token


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def write_private(path: Path, content: str) -> None:
    """0600 and atomic; no newline added: Jupyter reads JUPYTER_TOKEN_FILE verbatim."""
    write_atomically(path, content, 0o600)
