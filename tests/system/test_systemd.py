"""mlproxy as a systemd service, under a real systemd (PID 1 of a systemd-nspawn container).

One container for the module; the tests run in file order and each leaves the service the way
the next expects it, like an operator's session: install, start, break things, restart, stop,
uninstall.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest

from mlproxy_supervisor import systemd_unit
from mlproxy_supervisor.layout import default_settings
from tests.stack import ROOT
from tests.system.container import Container

pytestmark = pytest.mark.system

UNIT = "mlproxy"
TIMEOUTS = systemd_unit.timeouts(default_settings())
READY = "ready: mlflow ready, jupyter ready, route ok"


# --- helpers ------------------------------------------------------------------------------------


def show(box: Container, *properties: str) -> dict[str, str]:
    output = box.run("systemctl", "show", UNIT, "-p", ",".join(properties)).stdout
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def systemd_span(seconds: int) -> str:
    """Seconds as `systemctl show` prints a time span: 1min, 40s, 3min 30s."""
    minutes, seconds = divmod(seconds, 60)
    return " ".join(part for part in (f"{minutes}min" if minutes else "", f"{seconds}s" if seconds else "") if part)


def status_text(box: Container) -> str:
    return show(box, "StatusText")["StatusText"]


def inside(box: Container, *args: str, timeout: float = 180) -> dict:
    result = box.run("/opt/mlproxy/bin/python", "/mnt/system/inside.py", *args, timeout=timeout)
    return json.loads(result.stdout.strip().splitlines()[-1])  # MLflow's client prints lines of its own


def mlproxy(box: Container, *args: str, check: bool = True, timeout: float = 120):
    return box.run("mlproxy", *args, check=check, timeout=timeout)  # /usr/local/bin/mlproxy, linked by install


def cursor(box: Container) -> str:
    output = box.run("journalctl", "-n", "0", "--show-cursor", "--no-pager").stdout
    return output.strip().rsplit("-- cursor: ", 1)[-1]


def journal(box: Container, after: str | None = None) -> str:
    argv = ["journalctl", "-u", UNIT, "-b", "--no-pager", "-o", "short-precise"]
    if after:
        argv.append(f"--after-cursor={after}")
    return box.run(*argv, timeout=60).stdout


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def program_pid(box: Container, name: str) -> int:
    """A program's pid as the container sees it (`mlproxy ctl pid NAME`; `pid` alone: supervisord)."""
    return int(mlproxy(box, "ctl", "pid", *([name] if name != "supervisord" else [])).stdout.strip())


# --- install --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def box(machine, timings):
    started = time.monotonic()
    result = machine.run("/opt/mlproxy/bin/mlproxy", "install")
    timings.measure("mlproxy install", started)
    machine.install_output = result.stdout
    return machine


def test_install_creates_user_directories_config_and_unit(box):
    output = box.install_output
    for expected in ("created system user mlproxy", "wrote the default configuration /etc/mlproxy/mlproxy.toml",
                     "installed /etc/systemd/system/mlproxy.service", "linked /usr/local/bin/mlproxy"):  # fmt: skip
        assert expected in output, output
    passwd = box.run("getent", "passwd", "mlproxy").stdout.strip().split(":")
    assert passwd[5] == "/var/lib/mlproxy" and passwd[6].endswith("nologin"), passwd
    stat = box.run("stat", "-c", "%U:%G %a %n", "/etc/mlproxy/mlproxy.toml", "/var/lib/mlproxy", "/var/log/mlproxy").stdout
    assert stat.splitlines() == [
        "root:mlproxy 640 /etc/mlproxy/mlproxy.toml",
        "mlproxy:mlproxy 750 /var/lib/mlproxy",
        "mlproxy:mlproxy 750 /var/log/mlproxy",
    ], stat
    # The unit install wrote for /opt/mlproxy is the committed one, byte for byte.
    installed = box.run("cat", "/etc/systemd/system/mlproxy.service").stdout
    assert installed == (ROOT / "systemd" / "mlproxy.service").read_text()
    assert box.run("systemd-analyze", "verify", "mlproxy.service", check=False).stderr == ""
    # Scored by the systemd that runs it, too (threshold on the 0-100 scale: 20 = 2.0).
    box.run("systemd-analyze", "security", "--threshold=20", "--no-pager", "mlproxy.service")


def test_install_is_idempotent_and_never_overwrites_the_config(box):
    box.run("sh", "-c", "echo '# kept by the operator' >> /etc/mlproxy/mlproxy.toml")
    before = box.run("sh", "-c", "md5sum /etc/mlproxy/mlproxy.toml /etc/systemd/system/mlproxy.service").stdout
    output = box.run("/opt/mlproxy/bin/mlproxy", "install").stdout
    assert "user mlproxy exists" in output and "kept the existing /etc/mlproxy/mlproxy.toml" in output, output
    assert "mlproxy.service is up to date" in output, output
    assert box.run("sh", "-c", "md5sum /etc/mlproxy/mlproxy.toml /etc/systemd/system/mlproxy.service").stdout == before
    assert "kept by the operator" in box.run("cat", "/etc/mlproxy/mlproxy.toml").stdout


def test_install_refuses_an_installation_the_service_cannot_run(box):
    # The same packages, reached through an interpreter path the service could not use.
    site = "/opt/mlproxy/lib/python3.11/site-packages"
    for prefix in ("/root/mlproxy-venv", "/srv/private/venv"):
        box.run("python3", "-m", "venv", "--without-pip", prefix)
        box.run("sh", "-c", f"echo {site} > {prefix}/lib/python3.11/site-packages/opt.pth")
        if prefix.startswith("/srv"):
            box.run("chmod", "700", "/srv/private")
        result = box.run(f"{prefix}/bin/python", "-m", "mlproxy_supervisor", "install", check=False)
        assert result.returncode == 1, result
        if prefix.startswith("/root"):
            assert "lives under /root" in result.stderr and "ProtectHome" in result.stderr, result.stderr
        else:
            assert "user mlproxy cannot run this installation" in result.stderr, result.stderr
            assert "/srv/private is not open to it (mode 700)" in result.stderr, result.stderr
        assert "/opt/mlproxy" in result.stderr  # the fix is named
    installed = box.run("cat", "/etc/systemd/system/mlproxy.service").stdout
    assert "ExecStart=/opt/mlproxy/bin/python3 " in installed  # untouched by the refused installs


# --- start ----------------------------------------------------------------------------------------


def test_start_returns_only_once_the_route_works(box, timings):
    started = time.monotonic()
    result = box.run("systemctl", "start", UNIT, check=False, timeout=TIMEOUTS.start + 30)
    took = timings.measure("systemctl start (first, creates the database)", started)
    assert result.returncode == 0, f"{result.stderr}\n{journal(box)[-5000:]}"
    # At the moment start returned: READY was in, and the route answers right away.
    assert status_text(box) == READY
    route = inside(box, "route")
    for path, answer in route.items():
        assert answer["status"] == 200, (path, answer)
        assert answer["without_token"] == 401, (path, answer)  # Jupyter's login applies (API clients: 401)
    assert route["mlflow/health"]["body"] == "OK"
    # systemd held the unit in "activating" until READY=1, not just until the fork.
    times = show(box, "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic", "ActiveState", "SubState")
    waited = (int(times["ActiveEnterTimestampMonotonic"]) - int(times["ExecMainStartTimestampMonotonic"])) / 1e6
    assert (times["ActiveState"], times["SubState"]) == ("active", "running")
    assert waited > 2, f"active {waited:.1f} s after exec: too soon to have waited for MLflow"
    timings["READY after exec"] = round(waited, 1)
    assert took < TIMEOUTS.start / 3, f"start took {took} s; TimeoutStartSec={TIMEOUTS.start} leaves too little room"


def test_status_text_is_the_agents_status(box):
    text = status_text(box)
    document = json.loads(mlproxy(box, "status", "--json").stdout)
    assert text == document["summary"] == READY


def test_watchdog_pings_keep_coming(box):
    values = show(box, "WatchdogUSec", "WatchdogTimestampMonotonic", "NotifyAccess", "KillMode", "MainPID")
    assert values["WatchdogUSec"] == systemd_span(TIMEOUTS.watchdog), values
    first = int(values["WatchdogTimestampMonotonic"])
    wait_until(lambda: int(show(box, "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]) > first,
               timeout=5, what="a WATCHDOG=1 from `mlproxy up`")  # fmt: skip
    assert "mlproxy_supervisor up" in box.run("cat", f"/proc/{values['MainPID']}/cmdline").stdout.replace("\0", " ")
    assert (values["NotifyAccess"], values["KillMode"]) == ("all", "mixed")


def test_operator_commands_as_root(box):
    # supervisord says RUNNING once a program has lived for its startsecs (up to 8 s), which on a
    # fast start can be after the route already works: give it that long.
    # With the journal, the `logforward` listener runs too (it tags each program's lines).
    running = {"agent": "RUNNING", "jupyter": "RUNNING", "logforward": "RUNNING", "mlflow": "RUNNING"}

    def listing():
        output = mlproxy(box, "ctl", "status").stdout
        return output if dict(re.findall(r"^(\w+)\s+(\w+)", output, re.M)) == running else None

    wait_until(listing, timeout=15, what="`mlproxy ctl status` listing every program RUNNING", interval=0.5)
    assert mlproxy(box, "status").returncode == 0
    # The service user may use it too, as docs/install-vm.md says (runuser: a minimal Debian has no sudo).
    as_mlproxy = box.run("runuser", "-u", "mlproxy", "--", "mlproxy", "ctl", "status")
    assert dict(re.findall(r"^(\w+)\s+(\w+)", as_mlproxy.stdout, re.M)) == running, as_mlproxy.stdout
    # Plain `supervisorctl status`, as people type it on a VM, from any directory: this stack's programs.
    for argv in (("sh", "-c", "cd /root && supervisorctl status"),
                 ("runuser", "-u", "mlproxy", "--", "sh", "-c", "cd /tmp && supervisorctl status")):  # fmt: skip
        plain = box.run(*argv, check=False)
        assert dict(re.findall(r"^(\w+)\s+(\w+)", plain.stdout, re.M)) == running, (argv, plain)
    url = mlproxy(box, "url").stdout.strip()
    assert re.fullmatch(r"http://127\.0\.0\.1:8888/mlflow/\?token=[0-9a-f]{48}", url), url
    # The socket stays the service user's: 0700, and another user cannot connect.
    assert box.run("stat", "-c", "%U %a", "/run/mlproxy", "/run/mlproxy/supervisord.sock").stdout.split() == [
        "mlproxy", "700", "mlproxy", "700",
    ]  # fmt: skip
    probe = "import socket; s = socket.socket(socket.AF_UNIX); s.connect('/run/mlproxy/supervisord.sock')"
    denied = box.run("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "python3", "-c", probe, check=False)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied


def test_processes_run_as_mlproxy_without_privileges(box):
    for name in ("supervisord", "agent", "mlflow", "jupyter"):
        status = box.run("cat", f"/proc/{program_pid(box, name)}/status").stdout
        uid = re.search(r"^Uid:\s+(\d+)", status, re.M).group(1)
        assert box.run("getent", "passwd", uid).stdout.startswith("mlproxy:"), (name, status)
        assert re.search(r"^CapEff:\s+0+$", status, re.M), (name, status)
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), (name, status)


def test_kernels_work_under_the_hardening(box):
    result = inside(box, "kernel", "/mnt/system/kernel_check.py")
    assert result["status"] == "ok" and "KERNEL-CHECK-DONE" in result["output"], result["output"]
    assert "cffi callback 42" in result["output"] and "multiprocessing 9" in result["output"]
    assert "home /var/lib/mlproxy True" in result["output"]


# --- failures -------------------------------------------------------------------------------------


def test_kill_9_of_mlflow_is_recovered_and_status_follows(box, timings):
    box.logged_runs = inside(box, "log-runs", "3")["logged"]
    before = show(box, "MainPID", "NRestarts")
    old = program_pid(box, "mlflow")
    seen = []
    started = time.monotonic()
    os.kill(box.host_pid(old), signal.SIGKILL)

    def recovered():
        text = status_text(box)
        if not seen or seen[-1] != text:
            seen.append(text)
        return text == READY and len(seen) > 1

    wait_until(recovered, timeout=120, what="StatusText back to ready", interval=0.1)
    timings.measure("recovery from kill -9 of MLflow", started)
    assert any(text.startswith("degraded: mlflow") for text in seen), seen
    assert program_pid(box, "mlflow") != old
    assert show(box, "MainPID", "NRestarts") == before  # supervisord and the agent handled it, not systemd
    assert inside(box, "route")["mlflow/health"]["status"] == 200


def test_sigstop_of_mlproxy_up_makes_the_watchdog_restart_the_service(box, timings):
    """`mlproxy up` watches supervisord and the agent (tests/system/test_faults_under_systemd.py
    freezes supervisord); systemd's watchdog watches `up`."""
    box.logged_runs += inside(box, "log-runs", "2")["logged"]
    before = show(box, "MainPID", "NRestarts")
    frozen = box.host_pid(int(before["MainPID"]))
    mark = cursor(box)
    started = time.monotonic()
    os.kill(frozen, signal.SIGSTOP)
    try:
        wait_until(lambda: "Watchdog timeout" in journal(box, mark), timeout=TIMEOUTS.watchdog + 30,
                   what="systemd's watchdog timeout", interval=1)  # fmt: skip
        timings.measure("watchdog fired after SIGSTOP of mlproxy up", started)

        def restarted():
            now = show(box, "MainPID", "NRestarts", "ActiveState", "StatusText")
            return now if now["NRestarts"] != before["NRestarts"] and now["StatusText"] == READY else None

        after = wait_until(restarted, timeout=2 * TIMEOUTS.stop + TIMEOUTS.start + 30, what="the restarted service ready", interval=0.5)
        timings.measure("SIGSTOP of mlproxy up to ready again", started)
    finally:
        try:
            os.kill(frozen, signal.SIGCONT)  # only if the test failed: it should be gone
        except ProcessLookupError:
            pass
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    assert after["MainPID"] != before["MainPID"] and after["ActiveState"] == "active"
    assert not os.path.exists(f"/proc/{frozen}"), "the frozen `mlproxy up` outlived the restart"
    assert "Failed with result 'watchdog'" in journal(box, mark)


def test_restart_keeps_every_run_logged_before_it(box, timings):
    box.logged_runs += inside(box, "log-runs", "2")["logged"]
    started = time.monotonic()
    box.run("systemctl", "restart", UNIT, timeout=TIMEOUTS.stop + TIMEOUTS.start + 30)
    timings.measure("systemctl restart", started)
    assert status_text(box) == READY
    stored = set(inside(box, "list-runs")["runs"])
    missing = set(box.logged_runs) - stored
    assert not missing, f"{len(missing)} of {len(box.logged_runs)} runs lost: {sorted(missing)}"


def test_kill_9_of_supervisord_is_said_at_once_and_systemd_restarts_the_service(box, timings):
    before = show(box, "MainPID", "NRestarts")
    assert status_text(box) == READY
    started = time.monotonic()
    os.kill(box.host_pid(program_pid(box, "supervisord")), signal.SIGKILL)
    # Before the unit's main process changes, the status leaves "ready" and names the cause.
    left = wait_until(lambda: (lambda now: now if now["StatusText"] != READY or now["MainPID"] != before["MainPID"] else None)(
        show(box, "MainPID", "StatusText")), timeout=30, what="StatusText leaving ready", interval=0.05)  # fmt: skip
    assert left["MainPID"] == before["MainPID"], left
    assert left["StatusText"].startswith("down: supervisord was killed by SIGKILL"), left

    def restarted():
        now = show(box, "NRestarts", "StatusText")
        return now if now["NRestarts"] != before["NRestarts"] and now["StatusText"] == READY else None

    wait_until(restarted, timeout=TIMEOUTS.stop + TIMEOUTS.start + 30, what="the restarted service ready", interval=0.5)
    timings.measure("kill -9 of supervisord to ready again", started)
    assert inside(box, "route")["mlflow/health"]["status"] == 200


def test_journal_shows_the_agents_transitions_and_each_servers_output(box):
    text = journal(box)
    expected = {
        "agent status transitions": "status: " + READY,
        "the degraded state after kill -9": "status: degraded: mlflow",
        "agent events": "route stack-ready",
        "supervisord seeing the kill": "exited: mlflow (terminated by SIGKILL",
        "MLflow's output": "Uvicorn running on socket",
        "Jupyter's output": "Jupyter Server",
        "supervisord's own log": "spawned: 'mlflow'",
        "mlproxy up": "mlproxy: ready in",
    }
    missing = [what for what, needle in expected.items() if needle not in text]
    assert not missing, f"journalctl -u mlproxy lacks {missing}:\n{text[-4000:]}"
    # Each program's lines under its own tag, as `journalctl -t` finds them.
    tagged = {"mlproxy-mlflow": "Uvicorn running on", "mlproxy-jupyter": "Jupyter Server", "mlproxy-agent": "status: " + READY}
    for tag, needle in tagged.items():
        lines = box.run("journalctl", "-t", tag, "-b", "--no-pager", "-o", "cat", timeout=60).stdout
        assert needle in lines, f"journalctl -t {tag} lacks {needle!r}:\n{lines[-2000:]}"
    untagged = box.run("journalctl", "-t", "supervisord.py", "-b", "--no-pager", "-o", "cat", timeout=60).stdout
    assert "Uvicorn" not in untagged and "Jupyter Server" not in untagged, untagged[-2000:]
    # supervisord's CRIT about its socket is explained right after it, every start.
    crit = text.count("CRIT Server 'unix_http_server' running without any HTTP authentication checking")
    assert crit >= 2 and text.count("its socket /run/mlproxy/supervisord.sock is mode 0700") == crit, text[-4000:]
    token = box.run("cat", "/var/lib/mlproxy/jupyter_token").stdout.strip()
    assert token not in box.run("journalctl", "-b", "--no-pager").stdout, "the token leaked into the journal"


# --- stop and remove ------------------------------------------------------------------------------


def test_stop_leaves_no_process_of_the_stack(box, timings):
    mark = cursor(box)
    started = time.monotonic()
    box.run("systemctl", "stop", UNIT, timeout=TIMEOUTS.stop + 30)
    took = timings.measure("systemctl stop", started)
    assert show(box, "ActiveState")["ActiveState"] == "inactive"
    assert inside(box, "processes")["processes"] == {}
    stopped = journal(box, mark)
    # An ordered stop, in time: nothing needed systemd's SIGKILL.
    assert "SIGKILL" not in stopped and "left-over process" not in stopped, stopped
    assert "mlproxy: stopped" in stopped, stopped
    assert took < TIMEOUTS.stop
    assert box.run("test", "-e", "/run/mlproxy", check=False).returncode == 1  # RuntimeDirectory= removed


def test_old_schema_fails_once_with_a_fix_that_runs_as_the_service_user(box, timings):
    # A real database three migrations old, made by the service user as the old MLflow would have.
    data = "/var/lib/mlproxy"
    box.run("mv", f"{data}/mlflow.db", f"{data}/mlflow.db.current")
    box.run("runuser", "-u", "mlproxy", "--", "/opt/mlproxy/bin/python", "/mnt/support/make_old_database.py", f"{data}/mlflow.db", "3")
    before = show(box, "NRestarts")["NRestarts"]
    mark = cursor(box)
    try:
        started = time.monotonic()
        result = box.run("systemctl", "start", UNIT, check=False, timeout=TIMEOUTS.start + 30)
        timings.measure("systemctl start refused (old schema)", started)
        assert result.returncode != 0
        # Failed once, with the status that needs a person, and no restart scheduled.
        state = show(box, "ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts")
        assert (state["ActiveState"], state["Result"], state["ExecMainStatus"]) == ("failed", "exit-code", "2"), state
        time.sleep(2 * systemd_unit.RESTART_SEC)  # a restart would have begun by now
        assert show(box, "ActiveState", "NRestarts") == {"ActiveState": "failed", "NRestarts": before}
        shown = box.run("systemctl", "status", UNIT, "--no-pager", "-l", check=False).stdout
        assert "out-of-date schema" in shown and "runuser -u mlproxy -- " in shown, shown
        refused = journal(box, mark)
        assert refused.count("out-of-date schema") == 1, refused
        # The printed fix, run by root as printed, from root's home.
        command = next(line for line in refused.splitlines() if "mlflow db upgrade" in line).split(": ", 1)[1].strip()
        assert command.startswith("runuser -u mlproxy -- cp "), command
        box.run("sh", "-c", f"cd /root && {command}", timeout=300)
        owners = box.run("sh", "-c", f"stat -c '%U %n' {data}/mlflow.db*").stdout
        assert "root" not in owners and f"mlproxy {data}/mlflow.db.bak" in owners, owners
        box.run("systemctl", "start", UNIT, timeout=TIMEOUTS.start + 30)
        assert status_text(box) == READY
        assert inside(box, "experiment", "kept-through-upgrade")["found"], "the upgraded database lost its data"
    finally:
        box.run("systemctl", "stop", UNIT, timeout=TIMEOUTS.stop + 30)
        box.run("systemctl", "reset-failed", UNIT, check=False)
        box.run("sh", "-c", f"rm -f {data}/mlflow.db {data}/mlflow.db.bak && mv {data}/mlflow.db.current {data}/mlflow.db")


def test_start_fails_when_the_route_never_works_within_the_timeout(box, timings):
    # A broken installation: MLflow's server package unreadable, so MLflow exits at import, goes
    # FATAL, and the agent's retries cannot help. A drop-in shortens TimeoutStartSec to keep the
    # test short; the mechanism is the real one (Type=notify, no READY=1).
    server = "/opt/mlproxy/lib/python3.11/site-packages/mlflow/server"
    dropin = "/etc/systemd/system/mlproxy.service.d/test-timeout.conf"
    box.run("sh", "-c", f"mkdir -p {os.path.dirname(dropin)} && printf '[Service]\\nTimeoutStartSec=25\\n' > {dropin}")
    box.run("systemctl", "daemon-reload")
    box.run("chmod", "700", server)
    try:
        started = time.monotonic()
        result = box.run("systemctl", "start", UNIT, check=False, timeout=90)
        took = timings.measure("systemctl start failing on its timeout", started)
        assert result.returncode != 0 and 24 <= took < 60, (took, result)
        assert show(box, "Result")["Result"] == "timeout"
        assert not status_text(box).startswith("ready")
    finally:
        box.run("chmod", "755", server)
        box.run("systemctl", "stop", UNIT, timeout=TIMEOUTS.stop + 30)  # cancels the scheduled restart
        box.run("rm", "-rf", os.path.dirname(dropin))
        box.run("systemctl", "daemon-reload")
        box.run("systemctl", "reset-failed", UNIT, check=False)
    assert "start operation timed out" in journal(box)
    assert inside(box, "processes")["processes"] == {}


def test_uninstall_keeps_data_unless_purge(box):
    output = box.run("/opt/mlproxy/bin/mlproxy", "uninstall").stdout
    assert "removed /etc/systemd/system/mlproxy.service" in output, output
    assert box.run("test", "-e", "/etc/systemd/system/mlproxy.service", check=False).returncode == 1
    assert box.run("test", "-s", "/var/lib/mlproxy/mlflow.db", check=False).returncode == 0
    assert box.run("getent", "passwd", "mlproxy", check=False).returncode == 0
    assert "kept /etc/mlproxy, /var/lib/mlproxy, /var/log/mlproxy and user mlproxy" in output, output
    output = box.run("/opt/mlproxy/bin/mlproxy", "uninstall", "--purge").stdout
    for path in ("/etc/mlproxy", "/var/lib/mlproxy", "/var/log/mlproxy"):
        assert box.run("test", "-e", path, check=False).returncode == 1, output
    assert box.run("getent", "passwd", "mlproxy", check=False).returncode == 2, output
