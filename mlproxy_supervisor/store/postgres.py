"""Dumping and restoring a PostgreSQL store with PostgreSQL's own tools (pg_dump, pg_restore, psql).

pg_dump reads the whole database in one transaction, so the dump is one consistent snapshot
while MLflow keeps writing. The password comes from the URI or the store's credential sources
(credentials.store_secrets: the environment, mlflow.credentials_file, systemd credentials) and
reaches the tools in a 0600 password file that lives only as long as the command: never argv,
never printed. The tools get a libpq URI without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .. import credentials
from ..config import Settings

TIMEOUT = 6 * 3600  # seconds: a large store dumps for a long time; a hung server is the operator's call
# pg_advisory_lock key ("mlproxy" in ASCII) that every mlproxy host holds while it checks and
# upgrades the schema: one upgrades, the others wait for it.
SCHEMA_LOCK = 0x6D6C70726F7879


class PostgresError(Exception):
    pass


def is_postgres(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def connection(uri: str, credentials_file: str | None) -> tuple[str, str | None]:
    """(libpq URI without any password, the password or None). The password may be in the URI
    (user:password@ or ?password=), else in the store's credential sources."""
    from sqlalchemy.engine import URL, make_url  # here: `mlproxy up` imports this module, and SQLAlchemy takes 0.5 s
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(uri)
    except ArgumentError:
        raise PostgresError("mlflow.backend_store_uri is not a valid database URI") from None
    query = dict(url.query)
    in_query = query.pop("password", None)
    secrets = credentials.store_secrets(dict(os.environ), credentials_file)
    password = url.password or (in_query if isinstance(in_query, str) else None) or secrets.get("PGPASSWORD")
    # URL.set(password=None) keeps the password (None means "unchanged"): build a new one.
    plain = URL.create("postgresql", url.username, None, url.host, url.port, url.database, query)
    return plain.render_as_string(hide_password=False), password


def _masked(text: str, password: str | None) -> str:
    """A tool's or the driver's message, which may quote the password, without it."""
    text = text.strip()
    return text.replace(password, "***") if password else text


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@contextmanager
def _environment(password: str | None):
    """The tools' environment: the password in a 0600 PGPASSFILE, removed afterwards."""
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
    if password is None:
        yield env
        return
    with tempfile.TemporaryDirectory(prefix="mlproxy-pg-") as directory:  # 0700
        passfile = Path(directory) / "pgpass"
        descriptor = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(f"*:*:*:*:{_escape(password)}\n")
        env["PGPASSFILE"] = str(passfile)
        yield env


def _run(settings: Settings, tool: str, *args: str) -> str:
    if shutil.which(tool) is None:
        raise PostgresError(f"{tool} is not installed: apt-get install postgresql-client (Debian), then run this again")
    uri, password = connection(settings.mlflow.backend_store_uri, settings.mlflow.credentials_file)
    with _environment(password) as env:
        result = subprocess.run(
            [tool, *args, f"--dbname={uri}"], env=env, check=False, capture_output=True, text=True, timeout=TIMEOUT
        )
    if result.returncode != 0:
        raise PostgresError(f"{tool} failed (exit {result.returncode}): {_masked(result.stderr, password)[-2000:]}")
    return result.stdout


def dump(settings: Settings, target: Path) -> None:
    """The database as one snapshot, in pg_dump's custom format (pg_restore reads it), 0600."""
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # pg_dump keeps the mode
    _run(settings, "pg_dump", "--format=custom", "--no-owner", "--no-privileges", f"--file={target}")


def upgrade(settings: Settings, keep_alive) -> None:
    """`mlflow db upgrade`, the password in a PGPASSFILE (never argv); keep_alive() each second."""
    uri, password = connection(settings.mlflow.backend_store_uri, settings.mlflow.credentials_file)
    with _environment(password) as env:
        process = subprocess.Popen([sys.executable, "-m", "mlflow", "db", "upgrade", uri], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while True:
            try:
                _, errors = process.communicate(timeout=1)
                break
            except subprocess.TimeoutExpired:
                keep_alive()
    if process.returncode != 0:
        raise PostgresError(f"`mlflow db upgrade` failed (exit {process.returncode}): {_masked(errors, password)[-2000:]}")


def restore(settings: Settings, source: Path) -> None:
    """Replace the database's objects with the dump's, all or nothing (one transaction)."""
    _run(settings, "pg_restore", "--clean", "--if-exists", "--no-owner", "--no-privileges",
         "--single-transaction", "--exit-on-error", str(source))  # fmt: skip


class SchemaSession:
    """A connection to MLflow's database for its schema: the revision, and the upgrade lock. The
    lock belongs to the session and goes with the connection, a killed `mlproxy up` included."""

    def __init__(self, uri: str, credentials_file: str | None):
        self.uri, self._password = connection(uri, credentials_file)
        try:
            import psycopg  # the postgres extra (a postgresql+psycopg2:// store may lack it)
        except ImportError:
            raise PostgresError("psycopg is not installed: pip install -c constraints.txt '.[postgres]'") from None
        self._errors = psycopg.Error
        try:
            self._db = psycopg.connect(self.uri, password=self._password, autocommit=True, connect_timeout=10)
        except psycopg.Error as error:
            raise self._failure(error) from None

    def _failure(self, error: Exception) -> PostgresError:
        return PostgresError(_masked(str(error), self._password))

    def _one(self, query: str, *args):
        try:
            row = self._db.execute(query, args or None).fetchone()
        except self._errors as error:
            raise self._failure(error) from None
        return row[0] if row else None

    def revision(self) -> str | None:
        """MLflow's alembic revision in the database, or None when it has none yet."""
        if self._one("SELECT to_regclass('alembic_version')") is None:
            return None
        return self._one("SELECT version_num FROM alembic_version")

    def try_lock(self) -> bool:
        return bool(self._one("SELECT pg_try_advisory_lock(%s)", SCHEMA_LOCK))

    def close(self) -> None:
        self._db.close()


def schema_revision(settings: Settings) -> str | None:
    """MLflow's alembic revision in the database, or None when it has none yet."""
    session = SchemaSession(settings.mlflow.backend_store_uri, settings.mlflow.credentials_file)
    try:
        return session.revision()
    finally:
        session.close()
