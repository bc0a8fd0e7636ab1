"""Bad input: a clear message naming problem and fix, a non-zero exit, nothing started, data kept."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
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


def test_a_mistyped_key_or_variable_gets_the_near_one(tmp_path):
    stack = Stack(tmp_path / "state", config="[jupyter]\nprot = 8890\n")
    for command in (("up",), ("config", "check")):
        result = stack.mlproxy(*command)
        assert result.returncode == EXIT_CONFIG
        assert "jupyter.prot: unknown key (did you mean `port`?)" in result.stderr, result.stderr
    stack = Stack(tmp_path / "state", env={"MLPROXY_JUPYTER__PROT": "8890"})
    result = stack.mlproxy("config", "check")
    assert result.returncode == EXIT_CONFIG
    assert "MLPROXY_JUPYTER__PROT (did you mean MLPROXY_JUPYTER__PORT?)" in result.stderr, result.stderr
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
    # The fix names the setting, its variable and a port that is free.
    free = re.search(r"MLPROXY_JUPYTER__PORT=(\d+) \(\1 is free now\)", result.stderr)
    assert free and "`[jupyter] port = " in result.stderr, result.stderr
    assert port_is_free(int(free[1]))
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


@pytest.fixture()
def short_tmp_path():
    """A short directory: the supervisord socket under state_dir must fit AF_UNIX."""
    path = Path(tempfile.mkdtemp(prefix="mlp-"))
    yield path
    shutil.rmtree(path)


def test_a_state_dir_under_a_missing_parent_is_refused_with_the_path_and_the_fix(short_tmp_path):
    """A typo in state_dir (mlporxy) must not start an empty store with a new token."""
    tmp_path = short_tmp_path
    state = tmp_path / "srv" / "mlporxy" / "state"
    stack = Stack(state)
    result = subprocess.run([sys.executable, "-m", "mlproxy_supervisor", "up"], env=stack.env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == EXIT_CONFIG, result.stdout + result.stderr
    assert f"state_dir {state} does not exist, and neither does {tmp_path / 'srv'}" in result.stderr, result.stderr
    assert "MLPROXY_STATE_DIR" in result.stderr and f"mkdir -p {state.parent}" in result.stderr
    assert not (tmp_path / "srv").exists(), "nothing may be created for a mistyped state_dir"
    assert f"state directory: {state}" in result.stdout, "the banner names the state directory"


def test_a_state_dir_on_a_kernel_file_system_is_not_offered_chown(tmp_path):
    stack = Stack(Path("/proc/mlproxy"))
    result = subprocess.run([sys.executable, "-m", "mlproxy_supervisor", "up"], env=stack.env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "state_dir /proc/mlproxy is not writable" in result.stderr and "kernel file system" in result.stderr, result.stderr
    assert "chown" not in result.stderr, result.stderr


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
