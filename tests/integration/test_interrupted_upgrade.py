"""A schema upgrade (schema_upgrade = "backup-and-upgrade") interrupted by a power cut: the backup
taken before it is intact, the next start refuses with the commands that restore it, and once they
are run the upgrade runs again and the data is there."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing

import pytest

from mlproxy_supervisor.store import schema
from tests.stack import ROOT, Stack
from tests.support.faults import _descendants, _signal

pytestmark = pytest.mark.integration


def _dump(path) -> str:
    with closing(sqlite3.connect(path)) as connection:
        return "\n".join(connection.iterdump())


def test_an_upgrade_killed_midway_leaves_the_backup_and_says_how_to_restore_it(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    database = state / "mlflow.db"
    subprocess.run([sys.executable, str(ROOT / "tests" / "support" / "make_old_database.py"), str(database), "40"], check=True, capture_output=True)
    before = _dump(database)
    stack = Stack(state, config='[mlflow]\nschema_upgrade = "backup-and-upgrade"\n')
    stack.start(wait=False)
    marker = schema.upgrade_marker(database)
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert time.monotonic() < deadline, f"the upgrade never started\n{stack.tail()}"
        time.sleep(0.02)
    tree = _descendants(stack.process.pid)  # the power cut, mid-upgrade
    _signal(tree, signal.SIGSTOP)
    _signal(tree, signal.SIGKILL)
    stack.process.wait(60)
    assert marker.exists(), "the upgrade finished before the cut; make the database older"

    backups = list(state.glob("mlflow.db.*.bak"))
    assert len(backups) == 1 and _dump(backups[0]) == before, "the backup holds the old database, whole"
    refused = stack.mlproxy("up", timeout=120)
    assert refused.returncode != 0
    message = refused.stdout + refused.stderr
    assert "was interrupted" in message and str(backups[0]) in message, message
    commands = [line.strip() for line in message.splitlines() if line.strip().startswith("mv ")]
    assert len(commands) == 1, message
    subprocess.run(["sh", "-c", commands[0]], check=True)  # what the message tells the operator to run
    assert _dump(database) == before and not marker.exists()

    stack.start(timeout=300)
    try:
        kept = stack.session().get(stack.url("mlflow/api/2.0/mlflow/experiments/get-by-name"),
                                   params={"experiment_name": "kept-through-upgrade"}, timeout=10)
        assert kept.status_code == 200, kept.text
        assert schema.inspect_sqlite(database).up_to_date
    finally:
        assert stack.stop() == 0
