"""`mlproxy backup DEST` and `mlproxy restore SRC`: a consistent copy of the store and its artifacts.

Backup runs while the stack serves and clients write. The database is copied first, through
SQLite's online backup API (one consistent snapshot; a journal a crash left is rolled back
first), then the artifact directory. Every run committed before the snapshot therefore finds its
artifacts in the copy (MLflow writes an artifact before the client's call returns); artifacts of
later runs may be in it too, harmlessly. The copy is written to DEST.partial and renamed at the
end, so an interrupted backup never looks complete.

Restore needs a stopped stack. What it replaces is moved aside (`*.before-restore-STAMP`, with
its journal files), never deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from importlib.metadata import version
from pathlib import Path

from . import schema, sqlite_store
from .config import Settings
from .rpc import Supervisor, SupervisorUnavailable

MANIFEST = "manifest.json"
DATABASE = "mlflow.db"
ARTIFACTS = "artifacts"


class BackupError(Exception):
    pass


def _store(settings: Settings) -> tuple[Path, Path]:
    """(SQLite database, local artifact directory) of this stack, or a BackupError saying why not."""
    uri = settings.mlflow.backend_store_uri
    database = schema.sqlite_database(uri)
    if database is None:
        raise BackupError(
            "mlproxy backup copies SQLite stores only; for mlflow.backend_store_uri on a database server "
            "use that server's own tool (e.g. pg_dump) and copy the artifact store with it. Nothing was written."
        )
    artifacts = settings.mlflow.artifacts_destination
    if not artifacts.startswith("/"):
        raise BackupError(
            f"mlflow.artifacts_destination is {artifacts}, not a local directory: back it up with its own "
            "tools. Nothing was written."
        )
    return database, Path(artifacts)


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
    database, artifacts = _store(settings)
    if destination.exists():
        raise BackupError(f"{destination} already exists: give a new directory. Nothing was written.")
    if not database.exists():
        raise BackupError(f"the MLflow database {database} does not exist yet: nothing to back up.")
    partial = destination.with_name(destination.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # our own leftover from an interrupted backup
    partial.mkdir(mode=0o700, parents=True)
    started = time.time()
    sqlite_store.copy(database, partial / DATABASE)  # first: the snapshot the artifacts must cover
    files = _copy_tree(artifacts, partial / ARTIFACTS) if artifacts.exists() else 0
    state = schema.inspect_sqlite(partial / DATABASE)
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "database": DATABASE,
        "artifacts": ARTIFACTS,
        "artifact_files": files,
        "schema_revision": state.current if state else None,
        "mlflow_version": version("mlflow"),
        "source": {"database": str(database), "artifacts": str(artifacts)},
    }
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    partial.rename(destination)
    return manifest


def stack_running(settings: Settings) -> bool:
    try:
        Supervisor(settings.socket_path, timeout=2).state()
    except SupervisorUnavailable:
        return False
    return True


def _move_aside(path: Path, stamp: str) -> Path | None:
    if not path.exists():
        return None
    aside = path.with_name(f"{path.name}.before-restore-{stamp}")
    path.rename(aside)
    return aside


def restore(settings: Settings, source: Path) -> list[Path]:
    """Put the backup at `source` in place of this stack's store; returns what was moved aside."""
    database, artifacts = _store(settings)
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise BackupError(f"{source} is not an mlproxy backup ({source / MANIFEST}: {error}). Nothing was changed.") from None
    if stack_running(settings):
        raise BackupError(
            f"the stack is running (supervisord answers on {settings.socket_path}): stop it first "
            "(systemctl stop mlproxy, or Ctrl-C on `mlproxy up`), then restore. Nothing was changed."
        )
    problems = sqlite_store.integrity_problems(source / manifest["database"])
    if problems:
        raise BackupError(f"the backup's database fails SQLite's integrity check: {problems[:3]}. Nothing was changed.")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = [aside for path in [database, *sqlite_store.journal_files(database), artifacts] if (aside := _move_aside(path, stamp))]
    database.parent.mkdir(parents=True, exist_ok=True)
    sqlite_store.copy(source / manifest["database"], database)
    if (source / manifest["artifacts"]).exists():
        _copy_tree(source / manifest["artifacts"], artifacts)
    else:
        artifacts.mkdir(parents=True, exist_ok=True)
    _own_like(database.parent, [database, artifacts])
    return moved


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
    except (BackupError, sqlite_store.StoreError) as error:
        print(f"mlproxy backup: {error}", file=sys.stderr)
        return 1
    print(f"backup written to {destination}: database at schema {manifest['schema_revision']}, "
          f"{manifest['artifact_files']} artifact files (snapshot taken {manifest['created']})")
    return 0


def run_restore(settings: Settings, source: Path) -> int:
    try:
        moved = restore(settings, source)
    except (BackupError, sqlite_store.StoreError) as error:
        print(f"mlproxy restore: {error}", file=sys.stderr)
        return 1
    print(f"restored {source} into {settings.mlflow.backend_store_uri} and {settings.mlflow.artifacts_destination}")
    for path in moved:
        print(f"  kept the previous {path.name.split('.before-restore-')[0]} as {path}")
    print("start the stack again (systemctl start mlproxy, or mlproxy up)")
    return 0
