"""`mlproxy backup` while clients write, and `mlproxy restore` on the stopped stack: every write
acknowledged before the backup began is back, readable through /mlflow/. A restore on a
running stack is refused and changes nothing."""

from __future__ import annotations

import json
import time

import pytest

from tests.stack import Stack
from tests.support.faults import Load

pytestmark = pytest.mark.integration


def _identity(stack: Stack) -> list[tuple[str, int]]:
    """The store's files as the restore would replace them (the clients still write into them)."""
    return sorted((p.name, p.stat().st_ino) for p in stack.state_dir.iterdir() if p.name in ("mlflow.db", "artifacts"))


def test_backup_mid_load_restores_every_write_acknowledged_before_it(tmp_path):
    stack = Stack(tmp_path / "state").start(timeout=300)
    backup_dir = tmp_path / "backup"
    load = Load(stack, tmp_path, clients=2, seed=7)
    try:
        while load.acknowledged() < 60:
            time.sleep(0.2)
        before = {ledger: ledger.read_text() for ledger in load.ledgers}  # acknowledged before the backup began
        result = stack.mlproxy("backup", str(backup_dir), timeout=600)
        assert result.returncode == 0, result.stderr
        assert "backup written to" in result.stdout
        during = load.acknowledged()
        while load.acknowledged() < during + 20:  # the clients kept writing through the backup
            time.sleep(0.2)

        files = _identity(stack)
        refused = stack.mlproxy("restore", str(backup_dir))
        assert refused.returncode == 1 and "the stack is running" in refused.stderr and "Nothing was changed" in refused.stderr
        assert _identity(stack) == files and not list(stack.state_dir.glob("*.before-restore-*"))
        again = stack.mlproxy("backup", str(backup_dir))
        assert again.returncode == 1 and "already exists" in again.stderr
    finally:
        load.stop()
        assert stack.stop() == 0

    manifest = json.loads((backup_dir / "manifest.json").read_text())
    assert manifest["artifact_files"] > 0 and (backup_dir / "mlflow.db").exists()
    restored = stack.mlproxy("restore", str(backup_dir))
    assert restored.returncode == 0, restored.stderr
    assert list(stack.state_dir.glob("mlflow.db.before-restore-*")), "the replaced database is kept"
    for ledger, text in before.items():
        ledger.write_text(text)  # check exactly what was acknowledged before the backup began
    stack.start(timeout=300)
    try:
        found = load.verify()
        assert found["lost"] == [], found["lost"][:10]
        assert found["acknowledged"] >= 60 and found["by_kind"]["run"] > 0
    finally:
        assert stack.stop() == 0
