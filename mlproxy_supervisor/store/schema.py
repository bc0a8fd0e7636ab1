"""MLflow's database schema: is it current, and, when the config allows, back up and upgrade.

An out-of-date schema makes `mlflow server` exit 1. We look first, so that `mlproxy up` can refuse
with the exact command to run before anything starts. The expected revision is read from MLflow's
migration scripts with `ast` (importing them through alembic costs about 2 s of start-up).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from . import sqlite


class SchemaError(Exception):
    pass


@dataclass(frozen=True)
class SchemaState:
    database: Path | str  # a SQLite file, or a PostgreSQL URI without its password
    current: str | None  # None: a new, empty database
    expected: str
    known: frozenset[str]

    @property
    def up_to_date(self) -> bool:
        return self.current is None or self.current == self.expected

    @property
    def newer_than_mlflow(self) -> bool:
        return self.current is not None and self.current not in self.known


# `revision = "abc"` and `down_revision = ...` at the start of a line (alembic writes them so).
REVISION_LINE = re.compile(r"^(revision|down_revision)(?:\s*:[^=]+)?\s*=\s*(.+?)\s*$", re.MULTILINE)


def _revision_assignments(source: str) -> dict:
    """The revision and down_revision a migration script assigns. Found line by line (parsing
    all 69 scripts with ast took 50 ms of every MLflow start); ast for anything unusual."""
    try:
        return {name: ast.literal_eval(value) for name, value in REVISION_LINE.findall(source)}
    except (ValueError, SyntaxError):  # e.g. a tuple of parents spread over several lines
        values = {}
        for node in ast.parse(source).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target = node.target  # revision: str = "..."
            else:
                continue
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                values[target.id] = ast.literal_eval(node.value)
        return values


def _migration_revisions() -> tuple[str | None, frozenset[str]]:
    """(head revision, all revisions) of the installed MLflow's alembic migrations."""
    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        raise SchemaError("mlflow is not installed in this environment")
    versions = Path(spec.submodule_search_locations[0]) / "store" / "db_migrations" / "versions"
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in versions.glob("*.py"):
        values = _revision_assignments(script.read_text())
        if "revision" in values:
            revisions.add(values["revision"])
            down = values.get("down_revision")
            parents.update(down if isinstance(down, (tuple, list)) else [down] if down else [])
    heads = revisions - parents
    return (heads.pop() if len(heads) == 1 else None), frozenset(revisions)


def inspect_sqlite(database: Path) -> SchemaState | None:
    """The schema state of a SQLite store, or None when it cannot be judged here."""
    interrupted = interrupted_upgrade(database)
    if interrupted:
        raise SchemaError(interrupted)
    expected, known = _migration_revisions()
    if expected is None:
        return None
    if not database.exists() or database.stat().st_size == 0:
        return SchemaState(database, None, expected, known)
    try:
        # Read-write (never created here), so that SQLite can roll back a journal a crash left.
        with closing(sqlite.open_existing(database)) as connection:
            rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite.StoreError as error:
        raise SchemaError(str(error)) from None
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return SchemaState(database, None, expected, known)
        raise SchemaError(f"cannot read the MLflow database {database}: {error}") from None
    except sqlite3.DatabaseError as error:
        raise SchemaError(f"{database} is not a usable SQLite database: {error}") from None
    return SchemaState(database, rows[0][0] if rows else None, expected, known)


def refusal(state: SchemaState, uri: str, run_as: str = "") -> str:
    """run_as: a prefix such as `runuser -u mlproxy -- `, so the fix runs as the stack's user."""
    if state.newer_than_mlflow:
        return (
            f"the MLflow database {state.database} has schema revision {state.current}, which this "
            f"MLflow does not know: it was written by a newer MLflow. Install that MLflow version, "
            "or point mlflow.backend_store_uri at another database. Nothing was changed."
        )
    if isinstance(state.database, Path):
        backup = f"{run_as}cp {state.database} {state.database}.bak"
    else:  # the URI without its password, which libpq takes from PGPASSWORD or ~/.pgpass
        uri, backup = state.database, f"{run_as}{sys.executable} -m mlproxy_supervisor backup BACKUP_DIR"
    return (
        f"the MLflow database {state.database} has an out-of-date schema (revision {state.current}, "
        f"this MLflow expects {state.expected}). Nothing was changed. Either back it up and upgrade:\n"
        f"    {backup} && {run_as}{sys.executable} -m mlflow db upgrade {uri}\n"
        'or let mlproxy do both: set schema_upgrade = "backup-and-upgrade" in [mlflow].'
    )


def prepare_postgres(settings, say, keep_alive, run_as: str = "") -> None:
    """Refuse, or back up and upgrade, an out-of-date PostgreSQL schema before MLflow starts.

    Run by `mlproxy up`, not by the launcher: a launcher waiting on another host, or on the
    database server's work, uses no CPU, and the agent would take it for a hung start. Hosts
    starting together on one database take turns under an advisory lock: one upgrades while the
    others wait, then find the schema current. Raises SchemaError when the schema is refused."""
    from . import postgres

    expected, known = _migration_revisions()
    if expected is None:
        return
    try:
        session = postgres.SchemaSession(settings.mlflow.backend_store_uri, settings.mlflow.credentials_file)
    except postgres.PostgresError as error:
        # Not there yet: MLflow's start reports the same cause, and the agent retries it.
        say(f"cannot check the schema of the MLflow database: {error}")
        return
    try:
        if not session.try_lock():
            say(f"waiting for another mlproxy host to finish with the schema of {session.uri}")
            while not session.try_lock():
                keep_alive()
                time.sleep(1)
        state = SchemaState(session.uri, session.revision(), expected, known)
        if state.up_to_date:
            return
        if state.newer_than_mlflow or settings.mlflow.schema_upgrade == "refuse":
            raise SchemaError(refusal(state, session.uri, run_as))
        backup = settings.state_dir / "backups" / f"mlflow-{state.current}-{time.strftime('%Y%m%d-%H%M%S')}.pgdump"
        backup.parent.mkdir(mode=0o700, exist_ok=True)
        say(f"backing up {session.uri} to {backup} (pg_dump), then upgrading its schema from {state.current} to {state.expected}")
        postgres.dump(settings, backup)
        try:
            postgres.upgrade(settings, keep_alive)
        except postgres.PostgresError as error:
            raise SchemaError(
                f"{error}\nThe database may be partly upgraded; the dump taken before is {backup} "
                f"(pg_restore --clean --if-exists --no-owner --single-transaction --dbname={session.uri} {backup} "
                "puts it back). Nothing else was changed."
            ) from None
        say(f"upgraded the schema of {session.uri} to {state.expected}; the dump taken before is {backup}")
    except postgres.PostgresError as error:
        raise SchemaError(f"cannot check or upgrade the schema of the MLflow database: {error}") from None
    finally:
        session.close()


def upgrade_marker(database: Path) -> Path:
    """Present while an upgrade runs: if it is still there at the next start, the upgrade was
    interrupted (kill -9, a power cut) and the database may be half-upgraded."""
    return database.with_name(database.name + ".upgrading")


def interrupted_upgrade(database: Path) -> str | None:
    """How to recover from an upgrade that was interrupted, or None."""
    marker = upgrade_marker(database)
    try:
        facts = json.loads(marker.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        facts = {"backup": f"(unreadable marker {marker}: {error}; see the *.bak files beside it)"}
    half = database.with_name(database.name + ".half-upgraded")
    return (
        f"an upgrade of the MLflow database {database} from schema {facts.get('from')} to {facts.get('to')} "
        f"was interrupted (started {facts.get('started')}); the database may be half-upgraded. The copy taken "
        f"before it is intact: {facts['backup']}. With the stack stopped, put it back (the journal moves "
        f"with the half-upgraded file; never delete a journal):\n"
        f"    mv {database} {half}; [ -e {database}-journal ] && mv {database}-journal {half}-journal; "
        f"cp {facts['backup']} {database} && rm {marker}\n"
        "then start again: the upgrade runs again from the backup."
    )


def backup_and_upgrade(state: SchemaState, uri: str, env: dict[str, str]) -> Path:
    """Copy the database aside, run `mlflow db upgrade`; on failure put the copy back. A marker
    file tells the next start when this was interrupted (see interrupted_upgrade)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = state.database.with_name(f"{state.database.name}.{state.current}.{stamp}.bak")
    sqlite.copy(state.database, backup)
    marker = upgrade_marker(state.database)
    facts = {"backup": str(backup), "from": state.current, "to": state.expected, "started": stamp}
    with open(marker, "w") as out:  # durable before the first change to the database
        out.write(json.dumps(facts) + "\n")
        out.flush()
        os.fsync(out.fileno())
    result = subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", uri], env=env, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        sqlite.copy(backup, state.database)
        marker.unlink()
        raise SchemaError(
            f"`mlflow db upgrade` failed (exit {result.returncode}); the database was restored from "
            f"{backup}, unchanged:\n{result.stderr[-2000:]}"
        )
    marker.unlink()
    return backup
