"""Opening and copying an existing SQLite store safely after a crash.

A writer killed mid-transaction (kill -9, the OOM killer, a power cut) leaves a hot rollback
journal (`mlflow.db-journal`). SQLite rolls it back on the next read, which needs a read-write
connection: a read-only one fails with "attempt to write a readonly database". So every read of
the store that can run after a crash opens it read-write, without creating it, and lets SQLite do
the rollback itself. Nothing here deletes a journal: deleting a hot journal corrupts the database.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

BUSY_TIMEOUT = 30.0  # seconds: a live writer (MLflow sets 20 s itself) holds its lock that long at most


class StoreError(Exception):
    pass


def database_file(uri: str) -> Path | None:
    """The file behind an absolute sqlite:////path URI, else None (another database)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    return Path(uri[len(prefix) :].split("?", 1)[0])


def journal_files(database: Path) -> list[Path]:
    """The side files SQLite keeps next to a database (rollback journal, WAL and its index)."""
    return [database.with_name(database.name + suffix) for suffix in ("-journal", "-wal", "-shm")]


def open_existing(database: Path) -> sqlite3.Connection:
    """A read-write connection to an existing database (never creates one). A pending journal is
    rolled back by SQLite on the first read."""
    connection = sqlite3.connect(f"file:{quote(str(database))}?mode=rw", uri=True, timeout=BUSY_TIMEOUT)
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()  # rolls a hot journal back now
    except sqlite3.OperationalError as error:
        connection.close()
        if "readonly" in str(error):
            journal = database.with_name(database.name + "-journal")
            raise StoreError(
                f"{database} has a pending rollback journal ({journal}) left by a crash, and this user cannot "
                f"write the database or its directory to roll it back. Run the same command as the user that "
                f"owns {database}; do not delete the journal (that would corrupt the database)."
            ) from None
        raise
    return connection


def set_journal_mode(database: Path, mode: str) -> None:
    """Put the database (created if new, for MLflow to fill) in `mode` ("wal" or "delete"). The mode
    is stored in the file, so every later connection, MLflow's included, uses it."""
    database.parent.mkdir(parents=True, exist_ok=True)
    connection = open_existing(database) if database.exists() else sqlite3.connect(database, timeout=BUSY_TIMEOUT)
    with closing(connection):
        actual = connection.execute(f"PRAGMA journal_mode={mode}").fetchone()[0]
    if actual != mode:
        raise StoreError(f"SQLite kept {database} in journal mode {actual}, not {mode} (another process holds it open?)")


def copy(source: Path, target: Path) -> None:
    """A consistent copy of `source` into `target` (replacing its content), through SQLite's online backup:
    safe while writers run, and after a crash (the source's pending journal is rolled back
    first). The copy is in rollback-journal mode, a single self-contained file."""
    with closing(open_existing(source)) as origin, closing(sqlite3.connect(target)) as replica:
        origin.backup(replica)
        replica.execute("PRAGMA journal_mode=DELETE").fetchone()


def integrity_problems(database: Path) -> list[str]:
    """What `PRAGMA integrity_check` finds wrong (empty when the database is sound)."""
    with closing(open_existing(database)) as connection:
        rows = [row[0] for row in connection.execute("PRAGMA integrity_check").fetchall()]
    return [] if rows == ["ok"] else rows
