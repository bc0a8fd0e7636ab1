"""A database made by an older MLflow from PyPI (its own server, its own client), taken over by
mlproxy: refused without `schema_upgrade`, untouched; with `schema_upgrade = "backup-and-upgrade"`
backed up, upgraded, and every run, param, metric step, tag and artifact readable through /mlflow/
with today's client."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

import pytest
import requests

from mlproxy_supervisor.exits import EXIT_CONFIG
from tests.stack import ROOT, Stack, port_is_free, processes_under
from tests.support import old_mlflow
from tests.support.mlflow_client import run_client
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

OLD_CLIENT = ROOT / "tests" / "support" / "old_mlflow_client.py"


def _dump(path: Path) -> str:
    with closing(sqlite3.connect(path)) as connection:
        return "\n".join(connection.iterdump())


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wait_for_old_server(server: subprocess.Popen, port: int, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the old mlflow server exited {server.returncode}:\n{log.read_text()[-3000:]}"
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the old mlflow server did not answer in {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def old_state(tmp_path_factory) -> tuple[Path, dict]:
    """A state directory as the old MLflow server left it (mlflow.db, artifacts/), and what its
    client logged."""
    venv = old_mlflow.venv()
    base = tmp_path_factory.mktemp("old-mlflow")
    state = base / "state"
    state.mkdir()
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLPROXY_"))}
    environment["PATH"] = f"{venv / 'bin'}:{environment['PATH']}"  # its server execs its own gunicorn
    log = base / "old-server.log"
    port = free_port()
    assert port_is_free(port), f"port {port} is taken"
    with open(log, "w") as output:
        server = subprocess.Popen(
            [str(venv / "bin" / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{state / 'mlflow.db'}",
             "--serve-artifacts", "--artifacts-destination", str(state / "artifacts")],
            env=environment, cwd=base, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_for_old_server(server, port, log)
        result = subprocess.run(
            [str(venv / "bin" / "python"), str(OLD_CLIENT), f"http://127.0.0.1:{port}", str(base / "scratch")],
            env=environment, check=False, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        logged = json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # mlflow, gunicorn and its worker
        server.wait(60)
    return state, logged


def _copy(old_state, tmp_path) -> Path:
    state = tmp_path / "state"
    shutil.copytree(old_state[0], state)
    return state


def test_a_database_of_an_older_mlflow_is_refused_without_schema_upgrade(old_state, tmp_path):
    state = _copy(old_state, tmp_path)
    before = _digest(state / "mlflow.db")
    stack = Stack(state)
    result = stack.mlproxy("up", timeout=120)
    assert result.returncode == EXIT_CONFIG, result.stderr  # a person must act: systemd does not retry
    assert "out-of-date schema" in result.stderr and "mlflow db upgrade sqlite:///" in result.stderr, result.stderr
    assert 'schema_upgrade = "backup-and-upgrade"' in result.stderr
    assert _digest(state / "mlflow.db") == before, "a refused start changed the database"
    assert not list(state.glob("mlflow.db.*.bak")) and not processes_under(state)
    assert all(port_is_free(port) for port in stack.ports.values())


def test_a_database_of_an_older_mlflow_is_backed_up_upgraded_and_every_write_readable(old_state, tmp_path):
    state = _copy(old_state, tmp_path)
    logged = old_state[1]
    before = _dump(state / "mlflow.db")
    stack = Stack(state, config='[mlflow]\nschema_upgrade = "backup-and-upgrade"\n')
    stack.start(timeout=300)
    try:
        backups = list(state.glob("mlflow.db.*.bak"))
        assert len(backups) == 1 and _dump(backups[0]) == before, "the backup must hold the old database as it was"
        found = _read_back(stack, tmp_path / "downloads")
    finally:
        assert stack.stop() == 0
    assert found["experiment"] == "made-by-an-old-mlflow"
    assert set(found["runs"]) == set(logged["runs"])
    for run_id, wanted in logged["runs"].items():
        got = found["runs"][run_id]
        assert got["name"] == wanted["name"] and got["status"] == "FINISHED", got
        assert got["params"] == wanted["params"], run_id
        assert got["metrics"] == wanted["metrics"], run_id  # every step, in order
        assert {k: got["tags"].get(k) for k in wanted["tags"]} == wanted["tags"], run_id
        assert got["artifacts"] == wanted["artifacts"], run_id  # every file, byte for byte


READ_BACK = """
import json, sys
from pathlib import Path
from mlflow.tracking import MlflowClient

client, downloads = MlflowClient(), Path(sys.argv[1])
experiment = client.get_experiment_by_name("made-by-an-old-mlflow")
found = {"experiment": experiment.name, "runs": {}}
for run in client.search_runs([experiment.experiment_id]):
    run_id = run.info.run_id
    metrics = {key: [[m.step, m.value] for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
               for key in run.data.metrics}
    local = Path(client.download_artifacts(run_id, "", str(downloads / run_id)))
    artifacts = {str(p.relative_to(local)): p.read_text() for p in sorted(local.rglob("*")) if p.is_file()}
    found["runs"][run_id] = {"name": run.info.run_name, "status": run.info.status, "params": run.data.params,
                             "metrics": metrics, "tags": run.data.tags, "artifacts": artifacts}
print(json.dumps(found))
"""


def _read_back(stack: Stack, downloads: Path) -> dict:
    return run_client(READ_BACK, stack.base, stack.token, str(downloads), timeout=300)
