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
        # Never through a link: root reading the stack's token must not read (or tighten) another file.
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as error:
        raise CredentialError(f"cannot read the token file {path}: {error.strerror}") from None
    with os.fdopen(descriptor) as handle:
        info = os.fstat(descriptor)
        token = handle.read().strip()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO) and info.st_uid == os.geteuid():
            # Ours and too open (copied by hand, restored from a backup): tighten it.
            os.fchmod(descriptor, 0o600)
    if not token:
        raise CredentialError(f"the token file {path} is empty: delete it to generate a new token")
    return token


def write_private(path: Path, content: str) -> None:
    """0600 and atomic; no newline added: Jupyter reads JUPYTER_TOKEN_FILE verbatim."""
    write_atomically(path, content, 0o600)


# Secrets of the stores, read by MLflow's process only: libpq reads PGPASSWORD, boto3 the AWS_*
# variables. They reach it from `up`'s environment, a 0600 file (mlflow.credentials_file) or
# systemd credentials (LoadCredential=NAME:..., files in $CREDENTIALS_DIRECTORY); never argv,
# never the launch file.
STORE_SECRETS = ("PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
SYSTEMD_CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


def parse_secrets_file(text: str, path: Path) -> dict[str, str]:
    """KEY=VALUE lines (blank lines and # comments allowed); only STORE_SECRETS names."""
    values = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, equals, value = line.partition("=")
        name = name.strip().removeprefix("export ").strip()
        if not equals or name not in STORE_SECRETS:
            raise CredentialError(
                f"{path} line {number}: expected NAME=VALUE with NAME one of {', '.join(STORE_SECRETS)}"
            )
        values[name] = value.strip().strip("'\"")
    return values


def _private_file_text(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as error:
        raise CredentialError(f"cannot read the credentials file {path}: {error.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialError(
            f"the credentials file {path} is readable by others (mode {stat.S_IMODE(mode):o}): chmod 600 {path}"
        )
    return text


def store_secrets(environ: dict[str, str], credentials_file: str | None) -> dict[str, str]:
    """The store secrets for MLflow's environment: the environment wins, then the file, then
    systemd credentials (each name looked up separately)."""
    found: dict[str, str] = {}
    if directory := environ.get(SYSTEMD_CREDENTIALS_ENV):
        for name in STORE_SECRETS:
            candidate = Path(directory) / name
            if candidate.is_file():
                found[name] = candidate.read_text().strip()
    if credentials_file:
        path = Path(credentials_file)
        found.update(parse_secrets_file(_private_file_text(path), path))
    found.update({name: environ[name] for name in STORE_SECRETS if environ.get(name)})
    return found
