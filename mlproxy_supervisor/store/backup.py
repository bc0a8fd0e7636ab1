"""`mlproxy backup DEST` and `mlproxy restore SRC`: a consistent copy of the store and its artifacts.

Backup runs while the stack serves and clients write. The database is copied first, as one
consistent snapshot: SQLite through its online backup API (a journal a crash left is rolled back
first), PostgreSQL with pg_dump (postgres.py). Then the artifact directory. Every run
committed before the snapshot therefore finds its artifacts in the copy (MLflow writes an
artifact before the client's call returns); artifacts of later runs may be in it too, harmlessly.
The copy is written to DEST.partial and renamed at the end, so an interrupted backup never looks
complete.

Restore needs a stopped stack. What it replaces is kept, never deleted: SQLite files and the
artifact directory are moved aside (`*.before-restore-STAMP`, with the journal files); a
PostgreSQL database is first dumped to `<state_dir>/mlflow.before-restore-STAMP.pgdump`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from .. import rpc
from ..config import Settings
from ..redact import redact_uri
from . import postgres, schema, sqlite

MANIFEST = "manifest.json"
DATABASE = "mlflow.db"
POSTGRES_DUMP = "mlflow.pgdump"
ARTIFACTS = "artifacts"


class BackupError(Exception):
    pass


@dataclass(frozen=True)
class Store:
    kind: str  # "sqlite" or "postgresql"
    database: Path | None  # the SQLite file; None for PostgreSQL
    artifacts: Path


def _store(settings: Settings) -> Store:
    """This stack's database and local artifact directory, or a BackupError saying why not."""
    database = settings.sqlite_database
    if database is None and not postgres.is_postgres(settings.mlflow.backend_store_uri):
        raise BackupError(
            "mlproxy backup copies SQLite and PostgreSQL stores; for this mlflow.backend_store_uri use the "
            "database's own tools and copy the artifact store with them. Nothing was written."
        )
    artifacts = settings.local_artifacts
    if artifacts is None:
        raise BackupError(
            f"mlflow.artifacts_destination is {settings.mlflow.artifacts_destination}, not a local directory: back it up "
            "with its own tools. Nothing was written."
        )
    return Store("sqlite" if database else "postgresql", database, artifacts)


def _copy_tree(source: Path, target: Path) -> int:
    """Copy the artifact tree; a file removed while we copy is skipped. Returns the file count."""
    copied = 0
    target.mkdir(parents=True, exist_ok=True)
    for directory, _, files in os.walk(source):
        here = target / Path(directory).relative_to(source)
        here.mkdir(parents=True, exist_ok=True)
        for name in files:
            try:
                shutil.copy2(Path(directory) / name, here / name)
                copied += 1
            except FileNotFoundError:
                pass
    return copied


def backup(settings: Settings, destination: Path) -> dict:
    store = _store(settings)
    if destination.exists():
        raise BackupError(f"{destination} already exists: give a new directory. Nothing was written.")
    if store.database and not store.database.exists():
        raise BackupError(f"the MLflow database {store.database} does not exist yet: nothing to back up.")
    partial = destination.with_name(destination.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # our own leftover from an interrupted backup
    partial.mkdir(mode=0o700, parents=True)
    started = time.time()
    # First: the snapshot the artifacts must cover.
    if store.database:
        database = DATABASE
        sqlite.copy(store.database, partial / DATABASE)
        state = schema.inspect_sqlite(partial / DATABASE)
        revision = state.current if state else None
    else:
        database = POSTGRES_DUMP
        postgres.dump(settings, partial / POSTGRES_DUMP)
        revision = postgres.schema_revision(settings)
    files = _copy_tree(store.artifacts, partial / ARTIFACTS) if store.artifacts.exists() else 0
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "store": store.kind,
        "database": database,
        "artifacts": ARTIFACTS,
        "artifact_files": files,
        "schema_revision": revision,
        "mlflow_version": version("mlflow"),
        "source": {"database": str(store.database) if store.database else redact_uri(settings.mlflow.backend_store_uri),
                   "artifacts": str(store.artifacts)},
    }  # fmt: skip
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    partial.rename(destination)
    return manifest


def _move_aside(path: Path, stamp: str) -> Path | None:
    if not path.exists():
        return None
    aside = path.with_name(f"{path.name}.before-restore-{stamp}")
    path.rename(aside)
    return aside


def restore(settings: Settings, source: Path) -> list[Path]:
    """Put the backup at `source` in place of this stack's store; returns what was kept aside."""
    store = _store(settings)
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise BackupError(f"{source} is not an mlproxy backup ({source / MANIFEST}: {error}). Nothing was changed.") from None
    kind = manifest.get("store", "sqlite")  # backups before PostgreSQL support were all SQLite
    if kind != store.kind:
        raise BackupError(
            f"{source} is a backup of a {kind} store, and mlflow.backend_store_uri is a {store.kind} one: "
            "restore it into a stack configured like the one it came from. Nothing was changed."
        )
    if rpc.answers(settings.socket_path):
        raise BackupError(
            f"the stack is running (supervisord answers on {settings.socket_path}): stop it first "
            "(systemctl stop mlproxy, or Ctrl-C on `mlproxy up`), then restore. Nothing was changed."
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if store.database:
        problems = sqlite.integrity_problems(source / manifest["database"])
        if problems:
            raise BackupError(f"the backup's database fails SQLite's integrity check: {problems[:3]}. Nothing was changed.")
        kept = [aside for path in [store.database, *sqlite.journal_files(store.database)] if (aside := _move_aside(path, stamp))]
        store.database.parent.mkdir(parents=True, exist_ok=True)
        sqlite.copy(source / manifest["database"], store.database)
    else:
        # Other hosts may share this database: their stacks must be stopped too (docs/install-vm.md).
        previous = settings.state_dir / f"mlflow.before-restore-{stamp}.pgdump"
        postgres.dump(settings, previous)
        kept = [previous]
        postgres.restore(settings, source / manifest["database"])
    if aside := _move_aside(store.artifacts, stamp):
        kept.append(aside)
    if (source / manifest["artifacts"]).exists():
        _copy_tree(source / manifest["artifacts"], store.artifacts)
    else:
        store.artifacts.mkdir(parents=True, exist_ok=True)
    _own_like(store.artifacts.parent, [p for p in (store.database, store.artifacts, *kept) if p and p.exists()])
    return kept


def _own_like(reference: Path, paths: list[Path]) -> None:
    """Run as root (e.g. `sudo mlproxy restore`), give what we wrote to the owner of the data
    directory: the service user must be able to write its database and artifacts."""
    if os.geteuid() != 0:
        return
    owner = reference.stat()
    for path in paths:
        for item in [path, *(path.rglob("*") if path.is_dir() else [])]:
            os.chown(item, owner.st_uid, owner.st_gid, follow_symlinks=False)


def run_backup(settings: Settings, destination: Path) -> int:
    try:
        manifest = backup(settings, destination)
    except (BackupError, sqlite.StoreError, postgres.PostgresError) as error:
        print(f"mlproxy backup: {error}", file=sys.stderr)
        return 1
    print(f"backup written to {destination}: database at schema {manifest['schema_revision']}, "
          f"{manifest['artifact_files']} artifact files (snapshot taken {manifest['created']})")
    return 0


def run_restore(settings: Settings, source: Path) -> int:
    try:
        moved = restore(settings, source)
    except (BackupError, sqlite.StoreError, postgres.PostgresError) as error:
        print(f"mlproxy restore: {error}", file=sys.stderr)
        return 1
    print(f"restored {source} into {redact_uri(settings.mlflow.backend_store_uri)} and {settings.mlflow.artifacts_destination}")
    for path in moved:
        print(f"  kept the previous {path.name.split('.before-restore-')[0]} as {path}")
    print("start the stack again (systemctl start mlproxy, or mlproxy up)")
    return 0
