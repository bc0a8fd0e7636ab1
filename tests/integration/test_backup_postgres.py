"""`mlproxy backup` of a PostgreSQL store (pg_dump) while clients write, and `mlproxy restore`
(pg_restore) on the stopped stack after the database was lost: every write acknowledged before the
backup began is back, readable through /mlflow/. The database's password comes from the store's
credentials file and is never printed. A restore on a running stack is refused and changes nothing."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from mlproxy_supervisor.credentials import write_private
from tests.stack import Stack
from tests.support.faults import Load
from tests.support.ports import free_port
from tests.support.postgres import Postgres, binaries

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(binaries() is None, reason="PostgreSQL is not installed (apt-get install postgresql)"),
]


def test_postgres_backup_mid_load_restores_every_write_acknowledged_before_it(tmp_path):
    password = f"pg:pass\\{uuid.uuid4().hex}"  # ':' and '\\' need escaping in a password file
    postgres = Postgres(free_port(), password=password).init()
    postgres.start()
    secrets = tmp_path / "store-secrets"
    write_private(secrets, f"PGPASSWORD={password}\n")
    config = f'[mlflow]\nbackend_store_uri = "{postgres.uri}"\ncredentials_file = "{secrets}"\n'
    stack = Stack(tmp_path / "state", config=config)
    backup_dir = tmp_path / "backup"
    try:
        stack.start(timeout=300)
        load = Load(stack, tmp_path, clients=2, seed=8)
        try:
            while load.acknowledged() < 60:
                time.sleep(0.2)
            before = {ledger: ledger.read_text() for ledger in load.ledgers}  # acknowledged before the backup began
            result = stack.mlproxy("backup", str(backup_dir), timeout=600)
            assert result.returncode == 0, result.stderr
            assert "backup written to" in result.stdout and "database at schema " in result.stdout, result.stdout
            assert password not in result.stdout + result.stderr
            during = load.acknowledged()
            while load.acknowledged() < during + 20:  # the clients kept writing through the backup
                time.sleep(0.2)

            artifacts = (stack.state_dir / "artifacts").stat().st_ino
            runs = postgres.sql("SELECT count(*) FROM runs")
            refused = stack.mlproxy("restore", str(backup_dir))
            assert refused.returncode == 1 and "the stack is running" in refused.stderr and "Nothing was changed" in refused.stderr
            assert (stack.state_dir / "artifacts").stat().st_ino == artifacts
            assert not list(stack.state_dir.glob("*.before-restore-*"))
            assert int(postgres.sql("SELECT count(*) FROM runs")) >= int(runs), "the refused restore changed the database"
        finally:
            load.stop()
            assert stack.stop() == 0

        manifest_text = (backup_dir / "manifest.json").read_text()
        manifest = json.loads(manifest_text)
        assert manifest["store"] == "postgresql" and manifest["schema_revision"] and manifest["artifact_files"] > 0
        assert (backup_dir / manifest["database"]).stat().st_size > 0 and password not in manifest_text

        # The database is lost (every table gone), then the backup is restored into it.
        postgres.sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        restored = stack.mlproxy("restore", str(backup_dir), timeout=600)
        assert restored.returncode == 0, restored.stderr
        assert password not in restored.stdout + restored.stderr
        kept = list(stack.state_dir.glob("mlflow.before-restore-*.pgdump"))
        assert len(kept) == 1 and kept[0].stat().st_mode & 0o077 == 0, "the replaced database is kept, private"
        for ledger, text in before.items():
            ledger.write_text(text)  # check exactly what was acknowledged before the backup began
        stack.start(timeout=300)
        try:
            found = load.verify()
            assert found["lost"] == [], found["lost"][:10]
            assert found["acknowledged"] >= 60 and found["by_kind"]["run"] > 0
        finally:
            assert stack.stop() == 0
    finally:
        stack.stop()
        postgres.stop()
