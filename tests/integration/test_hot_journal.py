"""A crash mid-write leaves SQLite's hot rollback journal: every read of the store after it (the
launcher's schema check, the schema backup's copy, doctor's preflight, MLflow itself) must work,
with the committed data intact and the torn transaction rolled back."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from contextlib import closing

import pytest

from mlproxy_supervisor.store import schema, sqlite
from tests.stack import Stack
from tests.support.hot_journal import journal_of, leave_hot_journal
from tests.support.mlflow_client import run_client

pytestmark = pytest.mark.integration

# Committed data, written with MLflow's own store code straight into the database.
SEED = r"""
import json, sys
from mlflow.tracking import MlflowClient
client = MlflowClient(tracking_uri="sqlite:///" + sys.argv[1])
experiment = client.create_experiment("before-the-crash")
run = client.create_run(experiment).info.run_id
client.log_param(run, "alpha", "0.5")
for step in range(20):
    client.log_metric(run, "loss", 1.0 / (step + 1), step=step)
client.set_terminated(run)
print(json.dumps({"run": run}))
"""

READ_BACK = r"""
import json, sys
from mlflow.tracking import MlflowClient
run = MlflowClient().get_run(sys.argv[1])
history = MlflowClient().get_metric_history(sys.argv[1], "loss")
print(json.dumps({"params": run.data.params, "steps": len(history), "status": run.info.status}))
"""


@pytest.fixture
def crashed_store(tmp_path):
    database = tmp_path / "store" / "mlflow.db"
    database.parent.mkdir()
    seeded = subprocess.run([sys.executable, "-c", SEED, str(database)], capture_output=True, text=True, check=False, timeout=300)
    assert seeded.returncode == 0, seeded.stderr[-3000:]
    run = json.loads(seeded.stdout.strip().splitlines()[-1])["run"]
    leave_hot_journal(database)
    return database, run


def test_every_read_after_a_crash_rolls_the_journal_back(crashed_store, tmp_path):
    database, _ = crashed_store
    # The bug this guards against: a read-only connection cannot roll a hot journal back.
    with pytest.raises(sqlite3.OperationalError, match="readonly"), closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as c:
        c.execute("SELECT count(*) FROM experiments").fetchone()
    state = schema.inspect_sqlite(database)  # the launcher's and doctor's schema check
    assert state is not None and state.up_to_date
    assert not journal_of(database).exists(), "SQLite rolled the journal back and removed it"
    copy = tmp_path / "copy.db"
    sqlite.copy(database, copy)  # what backup_and_upgrade and `mlproxy backup` use
    for db in (database, copy):
        assert sqlite.integrity_problems(db) == []
        with closing(sqlite3.connect(db)) as connection:
            names = [row[0] for row in connection.execute("SELECT name FROM experiments ORDER BY name")]
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        assert "before-the-crash" in names and not any(name.endswith("-torn") for name in names)
        assert "crash_filler" not in tables, "the torn transaction's table must be rolled back"


def test_the_stack_starts_on_a_crashed_store_with_committed_data_intact(crashed_store, tmp_path):
    database, run = crashed_store
    config = f'[mlflow]\nbackend_store_uri = "sqlite:///{database}"\n'
    stack = Stack(tmp_path / "state", config=config).start(timeout=300)
    try:
        assert stack.mlproxy("doctor").returncode == 0
        found = run_client(READ_BACK, stack.base, stack.token, run, timeout=300)
        assert found == {"params": {"alpha": "0.5"}, "steps": 20, "status": "FINISHED"}
    finally:
        assert stack.stop() == 0
