"""Bad input: a clear message naming problem and fix, a non-zero exit, nothing started, data kept."""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mlproxy_supervisor.exits import EXIT_CONFIG, EXIT_DOWN
from tests.stack import ROOT, Stack, port_is_free, processes_under

pytestmark = pytest.mark.integration

def _nothing_started(stack: Stack) -> None:
    assert not (stack.state_dir / "run" / "supervisord.sock").exists()
    assert not processes_under(stack.state_dir)
    assert all(port_is_free(port) for port in stack.ports.values())


def _up(stack: Stack, timeout: float = 60) -> subprocess.CompletedProcess:
    return stack.mlproxy("up", timeout=timeout)


def test_malformed_config_names_the_line(tmp_path):
    stack = Stack(tmp_path / "state", config='[mlflow]\nport = "5001\n')
    result = _up(stack)
    assert result.returncode == 2
    assert "not valid TOML" in result.stderr and "line 2" in result.stderr
    _nothing_started(stack)


def test_unknown_key_is_an_error(tmp_path):
    stack = Stack(tmp_path / "state", config="[mlflow]\nworkerz = 2\n")
    for command in (("up",), ("config", "check")):
        result = stack.mlproxy(*command)
        assert result.returncode == 2
        assert "mlflow.workerz: unknown key" in result.stderr
    _nothing_started(stack)


def test_unknown_environment_variable_is_an_error(tmp_path):
    stack = Stack(tmp_path / "state", env={"MLPROXY_MLFLOW__WORKER": "2"})
    result = stack.mlproxy("config", "check")
    assert result.returncode == 2 and "MLPROXY_MLFLOW__WORKER" in result.stderr


def test_mlflow_beyond_loopback_is_refused(tmp_path):
    stack = Stack(tmp_path / "state", config='[mlflow]\nhost = "0.0.0.0"\n')
    result = stack.mlproxy("config", "check")
    assert result.returncode == 2 and "loopback only" in result.stderr


def test_config_show_masks_passwords(tmp_path):
    stack = Stack(tmp_path / "state", config='[mlflow]\nbackend_store_uri = "postgresql://ml:s3cret@db.internal/mlflow"\n')
    result = stack.mlproxy("config", "show")
    assert result.returncode == EXIT_DOWN, result.stderr  # shown, and no stack runs
    assert "s3cret" not in result.stdout and "postgresql://ml:***@db.internal/mlflow" in result.stdout


def test_port_in_use_is_named(tmp_path):
    stack = Stack(tmp_path / "state")
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # earlier tests' TIME_WAITs
        squatter.bind(("127.0.0.1", stack.jupyter_port))
        squatter.listen()
        result = _up(stack)
    assert result.returncode == 1  # may pass by itself (a process ending): worth systemd's retry
    assert f"port {stack.jupyter_port} (jupyter.port)" in result.stderr
    assert f"pid {os.getpid()}" in result.stderr, "the message should say who holds the port"
    assert "{" not in result.stderr and "Traceback" not in result.stderr, result.stderr  # no Python dict, no traceback
    assert not (stack.state_dir / "run" / "supervisord.sock").exists()


@pytest.fixture()
def unwritable_directory(tmp_path):
    """A directory this process cannot write: a read-only mount as root (root ignores mode
    bits), mode 0555 otherwise. It holds a file that must stay untouched."""
    directory = tmp_path / "readonly"
    directory.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(directory)], check=True)
        (directory / "mlflow.db").write_bytes(b"precious")
        subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True)
        yield directory
        subprocess.run(["umount", str(directory)], check=True)
    else:
        (directory / "mlflow.db").write_bytes(b"precious")
        directory.chmod(0o555)
        yield directory
        directory.chmod(0o755)


def test_unwritable_state_directory(unwritable_directory):
    stack = Stack(unwritable_directory)
    result = _up(stack)
    assert result.returncode == EXIT_CONFIG, result.stderr  # a person must act: systemd does not retry
    assert f"state_dir {unwritable_directory} is not writable" in result.stderr and "fix:" in result.stderr
    assert result.stderr.count("cannot start:") == 1, result.stderr  # not one per directory inside it
    if os.geteuid() == 0:  # a read-only mount: chown would not help
        assert "chown" not in result.stderr and "writable file system" in result.stderr, result.stderr
    assert [p.name for p in unwritable_directory.iterdir()] == ["mlflow.db"]
    assert (unwritable_directory / "mlflow.db").read_bytes() == b"precious"


def test_missing_database_driver(tmp_path):
    stack = Stack(tmp_path / "state", config='[mlflow]\nbackend_store_uri = "mysql://ml@db.internal/mlflow"\n')
    result = _up(stack)
    assert result.returncode == EXIT_CONFIG
    assert "database driver MySQLdb, which is not installed" in result.stderr and "pip install mysqlclient" in result.stderr
    _nothing_started(stack)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dump(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        return "\n".join(connection.iterdump())


@pytest.fixture()
def old_database(tmp_path) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    database = state / "mlflow.db"
    subprocess.run([sys.executable, str(ROOT / "tests" / "support" / "make_old_database.py"), str(database), "3"], check=True, capture_output=True)
    return database


def test_old_schema_is_refused_with_the_upgrade_command(old_database):
    before = _digest(old_database)
    stack = Stack(old_database.parent)
    result = _up(stack)
    assert result.returncode == EXIT_CONFIG
    assert "out-of-date schema" in result.stderr and "mlflow db upgrade sqlite:///" in result.stderr
    assert 'schema_upgrade = "backup-and-upgrade"' in result.stderr
    assert _digest(old_database) == before
    _nothing_started(stack)


def test_old_schema_is_backed_up_and_upgraded_when_allowed(old_database):
    before = _dump(old_database)
    stack = Stack(old_database.parent, config='[mlflow]\nschema_upgrade = "backup-and-upgrade"\n')
    stack.start(timeout=240)
    try:
        backups = list(old_database.parent.glob("mlflow.db.*.bak"))
        assert len(backups) == 1 and _dump(backups[0]) == before, "the backup must hold the old database"
        kept = stack.session().get(stack.url("mlflow/api/2.0/mlflow/experiments/get-by-name"), params={"experiment_name": "kept-through-upgrade"}, timeout=10)
        assert kept.status_code == 200, kept.text
    finally:
        assert stack.stop() == 0
