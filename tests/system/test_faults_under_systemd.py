"""Faults under systemd while clients write: supervisord frozen, then killed, then a power cut of the unit.

Clients inside the container (transient systemd services of their own, so the faults never touch
them) log params, metrics and small artifacts through `/mlflow/` with the real mlflow client and
append every acknowledged write to a ledger (tests/support/load.py). After each fault systemd must
bring the whole stack back (READY, the route works, the clients' writes are acknowledged again,
nothing of the old process tree left), and at the end every acknowledged write is read back.

The module installs and starts the service on the session's container and purges it at the end,
so tests/system/test_systemd.py finds the container as if this module had never run.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.stack import ROOT
from tests.system.container import Container
from tests.system.test_systemd import (
    READY,
    TIMEOUTS,
    UNIT,
    cursor,
    inside,
    journal,
    program_pid,
    show,
    status_text,
    wait_until,
)

pytestmark = pytest.mark.system

CLIENTS = 2
LOAD_DIR = "/var/tmp/mlproxy-faults"  # inside the container: the client script, ledgers, stop file
RECOVERY = TIMEOUTS.stop + TIMEOUTS.start + 60  # systemd's own budgets for a restart, and margin
MORE_WRITES = 10  # acknowledged writes that show the clients are getting through again


def client_unit(number: int) -> str:
    return f"faults-client-{number}"


def ledger(number: int) -> str:
    return f"{LOAD_DIR}/ledger-{number}.jsonl"


def as_client(*argv: str) -> list[str]:
    """A command run the way a user on the machine would: the mlflow client pointed at /mlflow/,
    the token read from the state directory inside the shell (never in an argv)."""
    script = 'MLFLOW_TRACKING_TOKEN="$(cat /var/lib/mlproxy/jupyter_token)" exec "$@"'
    return ["env", "HOME=/root", "MLFLOW_TRACKING_URI=http://127.0.0.1:8888/mlflow",
            "sh", "-c", script, "client", "/opt/mlproxy/bin/python", f"{LOAD_DIR}/load.py", *argv]  # fmt: skip


def acknowledged(box: Container) -> int:
    return sum(len((box.merged / ledger(n).lstrip("/")).read_text().splitlines()) for n in range(CLIENTS))


def clients_running(box: Container) -> bool:
    states = [box.run("systemctl", "is-active", client_unit(n), check=False).stdout.strip() for n in range(CLIENTS)]
    return all(state == "active" for state in states)


def stop_clients(box: Container) -> None:
    box.run("touch", f"{LOAD_DIR}/stop")

    def finished():
        return all(box.run("systemctl", "is-active", client_unit(n), check=False).stdout.strip() != "active" for n in range(CLIENTS))

    wait_until(finished, timeout=120, what="the clients to finish their last call", interval=1)


def stack_processes(box: Container) -> dict[str, str]:
    """The stack's processes (container pids), without the writing clients."""
    return {pid: command for pid, command in inside(box, "processes")["processes"].items() if "load.py" not in command}


def wait_for_writes(box: Container, what: str) -> int:
    start = acknowledged(box)
    wait_until(lambda: acknowledged(box) >= start + MORE_WRITES, timeout=180, what=f"{MORE_WRITES} writes acknowledged {what}", interval=1)
    assert clients_running(box), "a writing client died"
    return acknowledged(box)


def assert_back_with_a_new_tree(box: Container, before: dict[str, str], old: dict[str, str]) -> None:
    """The unit restarted by systemd, READY, the route answers, no process of the old tree left."""

    def restarted():
        now = show(box, "NRestarts", "ActiveState", "MainPID")
        if now["ActiveState"] == "active" and now["MainPID"] != before["MainPID"] and status_text(box) == READY:
            return now
        return None

    wait_until(restarted, timeout=RECOVERY, what="the unit active again with READY", interval=0.5)
    assert inside(box, "route")["mlflow/health"]["status"] == 200
    left = set(old) & set(stack_processes(box))
    assert not left, f"processes of the old tree outlived the restart: {[old[pid] for pid in left]}"


@pytest.fixture(scope="module")
def service(machine):
    """The service installed and started; purged again at the end."""
    box = machine
    box.run("/opt/mlproxy/bin/mlproxy", "install")
    try:
        box.run("systemctl", "start", UNIT, timeout=TIMEOUTS.start + 30)
        yield box
    finally:
        box.run("systemctl", "stop", UNIT, check=False, timeout=TIMEOUTS.stop + 30)
        box.run("/opt/mlproxy/bin/mlproxy", "uninstall", "--purge", check=False, timeout=120)


@pytest.fixture
def clients(service):
    """CLIENTS writers, each a transient service of the container's systemd, outside mlproxy's cgroup."""
    box = service
    (box.merged / LOAD_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (box.merged / LOAD_DIR.lstrip("/") / "load.py").write_bytes((ROOT / "tests" / "support" / "load.py").read_bytes())
    for number in range(CLIENTS):
        box.run("touch", ledger(number))
        box.run("systemd-run", f"--unit={client_unit(number)}", "--quiet", "--collect",
                *as_client("write", ledger(number), f"{LOAD_DIR}/stop", str(14100 + number)))  # fmt: skip
    try:
        yield box
    finally:
        try:
            stop_clients(box)
        finally:
            for number in range(CLIENTS):
                box.run("systemctl", "stop", client_unit(number), check=False)
            box.run("rm", "-rf", LOAD_DIR)


def test_frozen_and_killed_supervisord_and_a_power_cut_lose_no_acknowledged_write(clients, timings):
    box = clients
    wait_for_writes(box, "before any fault")

    # SIGSTOP of supervisord, never resumed: `mlproxy up` replaces it and the programs it ran
    # (watchdog.py); systemd restarts nothing.
    before, old = show(box, "NRestarts", "MainPID"), stack_processes(box)
    supervisord, mark = box.host_pid(program_pid(box, "supervisord")), cursor(box)
    replaced = set(old) - {before["MainPID"]}
    started = time.monotonic()
    os.kill(supervisord, signal.SIGSTOP)
    wait_until(lambda: not replaced & set(stack_processes(box)) and status_text(box) == READY, timeout=RECOVERY,
               what="a new supervisord and programs, READY", interval=0.5)  # fmt: skip
    timings.measure("SIGSTOP of supervisord to READY", started)
    assert show(box, "NRestarts", "MainPID") == before, "systemd restarted the unit: `mlproxy up` should have"
    assert inside(box, "route")["mlflow/health"]["status"] == 200
    assert "is frozen: socket unanswered" in journal(box, mark)
    wait_for_writes(box, "after SIGSTOP of supervisord")

    # kill -9 of supervisord: `mlproxy up` ends what it orphaned and fails; systemd restarts the unit.
    before, old = show(box, "NRestarts", "MainPID"), stack_processes(box)
    supervisord, mark = box.host_pid(program_pid(box, "supervisord")), cursor(box)
    started = time.monotonic()
    os.kill(supervisord, signal.SIGKILL)
    assert_back_with_a_new_tree(box, before, old)
    timings.measure("kill -9 of supervisord to READY", started)
    assert int(show(box, "NRestarts")["NRestarts"]) == int(before["NRestarts"]) + 1
    wait_for_writes(box, "after kill -9 of supervisord")

    # Power cut: SIGKILL to every process of the unit's cgroup at once, then start it again.
    before, old = show(box, "NRestarts", "MainPID"), stack_processes(box)
    started = time.monotonic()
    box.run("systemctl", "kill", "--signal=KILL", UNIT)
    wait_until(lambda: not set(old) & set(stack_processes(box)), timeout=60, what="every process of the unit gone", interval=0.2)
    box.run("systemctl", "start", UNIT, timeout=RECOVERY)  # may find systemd's own Restart= under way
    assert_back_with_a_new_tree(box, before, old)
    timings.measure("power cut to READY", started)
    wait_for_writes(box, "after the power cut")

    # Every write the server acknowledged, read back through /mlflow/ after the clients stopped.
    stop_clients(box)
    result = box.run(*as_client("verify", *(ledger(n) for n in range(CLIENTS))), timeout=600)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["acknowledged"] >= 3 * MORE_WRITES and report["by_kind"]["metric"] > 0, report
    assert report["lost"] == [], f"{len(report['lost'])} acknowledged writes lost: {report['lost'][:5]}"
    timings["writes acknowledged through the three faults (all read back)"] = report["acknowledged"]
    assert "supervisord was killed by SIGKILL" in journal(box, mark), "`mlproxy up` did not see supervisord killed"
