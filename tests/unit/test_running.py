"""Finding the running stack from any shell (running.py), and `mlproxy stop` under systemd."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from mlproxy_supervisor import rpc, running, stop
from mlproxy_supervisor.config import ConfigError, Settings, write_resolved
from mlproxy_supervisor.exits import EXIT_FAILED


@pytest.fixture()
def home(monkeypatch):
    """A user with no configuration and no MLPROXY_* variables; short paths (AF_UNIX)."""
    path = Path(tempfile.mkdtemp(prefix="run-"))
    for name in [name for name in os.environ if name.startswith("MLPROXY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path / "xdg"))
    monkeypatch.chdir(path)
    yield path
    shutil.rmtree(path)


def started(home: Path, name: str, port: int, systemd: bool = False) -> Settings:
    """What `up` leaves for other shells: the resolved file and the record."""
    settings = Settings(state_dir=home / name, jupyter={"port": port})
    write_resolved(settings, up={"pid": 1, "systemd": systemd})
    running.record(settings)
    return settings


def test_one_running_stack_is_found_many_are_named_and_a_stale_record_is_dropped(home, monkeypatch):
    monkeypatch.setattr(rpc, "answers", lambda socket_path, timeout=2.0: True)
    first = started(home, "a", 7888)
    assert running.locate_stack().jupyter.port == 7888
    (home / "mlproxy.toml").write_text("[jupyter]\nport = 'not a port'\n")  # not even read
    assert running.locate_stack().resolved_from == first.resolved_file
    started(home, "b", 7999)
    with pytest.raises(ConfigError, match=r"2 mlproxy stacks are running:\n  state_dir .*/a: http://127.0.0.1:7888\n  state_dir .*/b: http://127.0.0.1:7999\nname one"):
        running.locate_stack()
    (home / "mlproxy.toml").unlink()  # a shell that names its stack reads the configuration
    monkeypatch.setenv("MLPROXY_STATE_DIR", str(home / "b"))  # naming one finds exactly that one
    assert running.locate_stack().jupyter.port == 7999
    monkeypatch.delenv("MLPROXY_STATE_DIR")
    first.resolved_file.unlink()  # that `up` ended without removing its record (kill -9)
    assert running.locate_stack().jupyter.port == 7999
    assert len(list(running.records_dir().glob("stack-*.json"))) == 1


def test_stop_says_systemctl_for_a_stack_systemd_runs(home, monkeypatch, capsys):
    monkeypatch.setattr(rpc, "answers", lambda socket_path, timeout=2.0: True)
    started(home, "svc", 7888, systemd=True)
    assert stop.run(running.locate_stack(), timeout=5) == EXIT_FAILED
    assert "systemctl stop mlproxy" in capsys.readouterr().err
