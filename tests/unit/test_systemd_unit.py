"""The systemd unit: rendered from the one model, committed without drift, hardened, timed right."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import tomllib

import pytest

from mlproxy_supervisor import (
    install,
    layout,
    logforward,
    preflight,
    programs,
    supervisord_conf,
    systemd_unit,
    templates,
    timings,
    watchdog,
)
from mlproxy_supervisor.agent.notify import Notifier
from mlproxy_supervisor.config import Settings
from mlproxy_supervisor.exits import EXIT_CONFIG
from tests.stack import ROOT

COMMITTED = ROOT / "systemd" / "mlproxy.service"
REGENERATE = "python -m mlproxy_supervisor.systemd_unit > systemd/mlproxy.service"


def settings(**changes) -> Settings:
    data = tomllib.loads(layout.DEFAULT_CONFIG)
    for key, value in changes.items():
        section, _, name = key.rpartition("__")
        (data.setdefault(section, {}) if section else data)[name] = value
    return Settings(**data)


def directive(unit: str, name: str) -> list[str]:
    return re.findall(rf"^{name}=(.*)$", unit, re.M)


def test_committed_unit_is_the_renderers_output():
    rendered = systemd_unit.render(layout.default_settings(), layout.DOCUMENTED_PYTHON)
    assert COMMITTED.read_text() == rendered, f"systemd/mlproxy.service drifted from the renderer; regenerate: {REGENERATE}"


def test_unit_names_the_installation_and_the_installed_config():
    unit = systemd_unit.render(layout.default_settings(), "/srv/venv/bin/python3")
    assert directive(unit, "ExecStart") == ["/srv/venv/bin/python3 -m mlproxy_supervisor up --config /etc/mlproxy/mlproxy.toml"]
    assert directive(unit, "Type") == ["notify"] and directive(unit, "NotifyAccess") == ["all"]
    assert directive(unit, "User") == ["mlproxy"]
    for kind in ("State", "Runtime", "Logs", "Configuration"):
        assert directive(unit, f"{kind}Directory") == ["mlproxy"]


def test_default_config_matches_the_directories_systemd_makes():
    config = layout.default_settings()
    assert (config.state_dir, config.runtime_dir, config.log_dir) == (
        layout.STATE_DIR, layout.RUNTIME_DIR, layout.LOG_DIR,
    )  # fmt: skip
    assert config.log_target == "journal"
    assert systemd_unit.writable_paths(config) == []  # everything lives in the unit's own directories


def test_stop_timeout_covers_the_programs_ordered_stop():
    config = layout.default_settings()
    stops = {}
    for name in programs.programs(config.services):
        stops[name] = int(re.search(r"^stopwaitsecs=(\d+)", templates.text(f"supervisord.conf.d/{name}.conf"), re.M).group(1))
    timeouts = systemd_unit.timeouts(config)
    assert timeouts.stop_budget == sum(stops.values())
    assert timeouts.stop > sum(stops.values()) + 5  # plus `mlproxy up`'s grace for leftovers
    assert directive(systemd_unit.render(config), "TimeoutStopSec") == [str(timeouts.stop)]
    assert directive(systemd_unit.render(config), "KillMode") == ["mixed"]  # SIGTERM to `mlproxy up` only


def test_start_timeout_follows_the_agents_budgets():
    default = systemd_unit.timeouts(settings())
    slower = systemd_unit.timeouts(settings(agent__mlflow_startup_budget=600))
    assert slower.start - default.start == 600 - 120
    assert default.start >= 120 + 60  # never shorter than what the agent itself waits
    assert default.start_limit_interval >= systemd_unit.START_LIMIT_BURST * default.start


def test_watchdog_covers_one_loop_of_up_and_up_pings_often_enough():
    config = layout.default_settings()
    timeouts = systemd_unit.timeouts(config)
    assert timeouts.watchdog > timings.UP_LOOP_BOUND + timings.WATCHDOG_MIN_SPACING
    usec = str(timeouts.watchdog * 1_000_000)
    notifier = Notifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": usec})
    assert notifier.watchdog_interval == 1.0  # every loop of `up`, at most once a second
    assert Notifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000000"}).watchdog_interval == 0.5
    assert Notifier({"NOTIFY_SOCKET": "/run/x"}).watchdog_interval is None
    # `up` replaces a frozen supervisord well before systemd would notice anything.
    assert timeouts.watchdog > timings.SUPERVISORD_SILENCE + timings.ORPHAN_GRACE


def test_heartbeat_budget_covers_the_agents_longest_phase_and_its_sleep():
    default = watchdog.heartbeat_budget(layout.default_settings())
    assert default > timings.AGENT_PHASE_BOUND + timings.IDLE_TICK
    # A restart's calls and reap wait, each bounded by its timeout: a live agent is never replaced.
    assert timings.AGENT_PHASE_BOUND >= 4 * timings.RPC_TIMEOUT + timings.KILL_WAIT
    slow_poll = watchdog.heartbeat_budget(settings(agent__startup_period=10))
    assert slow_poll - default == 10 - timings.IDLE_TICK


def test_directories_outside_the_units_own_are_made_writable():
    config = settings(state_dir="/data/mlproxy", mlflow__artifacts_destination="/srv/artifacts")
    unit = systemd_unit.render(config)
    assert directive(unit, "ReadWritePaths") == ["-/data/mlproxy", "-/srv/artifacts"]
    assert directive(unit, "WorkingDirectory") == ["/data/mlproxy"]


def test_journal_log_target_keeps_files_and_copies_each_programs_lines_to_the_journal(tmp_path):
    config = settings(log_target="journal")
    program = supervisord_conf.render_program("mlflow", config)
    assert "stdout_logfile=/var/log/mlproxy/%(program_name)s.log" in program
    # Not supervisord's syslog copy, which tags every line `supervisord.py`: the listener's.
    assert "stdout_syslog" not in program and "stdout_events_enabled=true" in program
    assert "logforward" in supervisord_conf.programs(config)
    listener = supervisord_conf.render_program("logforward", config)
    assert "mlproxy_supervisor _logforward --journal" in listener
    assert "stderr_logfile=/var/log/mlproxy/logforward.log" in listener and "/dev/stdout" not in listener
    assert "silent=false" in supervisord_conf.render_main(config, tmp_path)
    files = settings(log_target="files")
    assert "stdout_events_enabled" not in supervisord_conf.render_program("mlflow", files)
    assert "logforward" not in supervisord_conf.programs(files)
    assert "silent=true" in supervisord_conf.render_main(files, tmp_path)


def test_journal_entries_carry_each_programs_identifier(tmp_path):
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = str(tmp_path / "journal.sock")
    receiver.bind(address)
    with receiver:
        logforward.Journal(address).send("mlflow", ["INFO:     Uvicorn running on http://127.0.0.1:5001\r", "second"])
        entries = [receiver.recv(65536).decode() for _ in range(2)]
    assert entries[0] == (
        "SYSLOG_IDENTIFIER=mlproxy-mlflow\nPRIORITY=6\nMESSAGE=INFO:     Uvicorn running on http://127.0.0.1:5001\n"
    )
    assert entries[1].endswith("MESSAGE=second\n")


def test_journal_refusing_a_line_keeps_it_in_the_listeners_log(tmp_path, capsys):
    logforward.Journal(str(tmp_path / "no-journal.sock")).send("jupyter", ["kept"])
    assert "[jupyter] kept" in capsys.readouterr().err


def test_log_target_defaults_to_the_journal_when_systemd_connects_it(monkeypatch):
    assert Settings(state_dir="/tmp/x").log_target == "files"
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    assert Settings(state_dir="/tmp/x").log_target == "journal"


@pytest.mark.parametrize("executable", ["/root/venv/bin/python3", "/home/ada/venv/bin/python3"])
def test_install_refuses_an_installation_protecthome_hides(monkeypatch, executable):
    monkeypatch.setattr(install.sys, "executable", executable)
    with pytest.raises(install.InstallError, match=r"ProtectHome=yes hides[\s\S]*/opt/mlproxy"):
        install.check_location()


def test_install_and_uninstall_need_root(monkeypatch, capsys):
    monkeypatch.setattr(install.os, "geteuid", lambda: 1000)
    assert install.run("install") == 1
    assert "must run as root" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (apt-get install systemd)")
def test_hardening_exposure_is_at_most_2():
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=20", "--no-pager", str(COMMITTED)],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    score = re.search(r"Overall exposure level for mlproxy\.service: ([\d.]+)", result.stdout).group(1)
    assert float(score) <= 2.0
    # The unit's own comment states the score; keep it true.
    assert f"scores this unit {score} " in COMMITTED.read_text(), f"update the score in the unit's comment to {score}"


def test_a_refusal_that_needs_a_person_is_not_restarted():
    unit = systemd_unit.render(settings())
    assert directive(unit, "RestartPreventExitStatus") == [str(EXIT_CONFIG)]
    assert directive(unit, "Restart") == ["on-failure"]


def test_the_printed_fix_runs_as_the_services_user_under_systemd(monkeypatch):
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    assert preflight.as_this_user() == ""  # `mlproxy up` in a shell: its reader is this user
    monkeypatch.setenv("INVOCATION_ID", "0123abcd")
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 998)
    monkeypatch.setattr(preflight, "current_user", lambda: "mlproxy")
    assert preflight.as_this_user() == "runuser -u mlproxy -- "


def test_the_log_listener_ends_a_requested_stop_with_status_0():
    listener = subprocess.Popen([sys.executable, "-m", "mlproxy_supervisor", "_logforward", "--journal"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert listener.stdout.readline() == b"READY\n"  # it waits for an event, as under supervisord
    listener.send_signal(signal.SIGTERM)
    assert listener.wait(60) == 0, listener.stderr.read()
