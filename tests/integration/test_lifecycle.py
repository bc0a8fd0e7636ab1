"""Stopping and restarting: nothing left behind, ports free, Jupyter before MLflow, runs kept."""

from __future__ import annotations

import re
import signal
import stat
import time
import uuid

import pytest

from mlproxy_supervisor.exits import EXIT_DOWN
from tests.stack import Stack, cmdlines, port_is_free, processes_under

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("lifecycle") / "state").start()
    yield stack
    stack.stop()


def test_token_file_is_private_and_never_in_argv_or_logs(stack):
    token_file = stack.state_dir / "jupyter_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((stack.state_dir / "run").stat().st_mode) == 0o700
    assert stat.S_IMODE((stack.state_dir / "run" / "supervisord.sock").stat().st_mode) == 0o700
    leaking = [f"{pid}: {line[:80]}" for pid, line in cmdlines().items() if stack.token in line]
    assert not leaking, f"token in argv of {leaking}"
    for log in (stack.state_dir / "logs").glob("*.log"):
        assert stack.token not in log.read_text(errors="replace"), f"token in {log}"
    assert stack.token not in (stack.state_dir / "run" / "status.json").read_text()


def _log_run(stack) -> str:
    session = stack.session()
    experiment = session.post(stack.url("mlflow/api/2.0/mlflow/experiments/create"), json={"name": f"keep-{uuid.uuid4().hex[:6]}"}, timeout=10).json()["experiment_id"]
    run = session.post(stack.url("mlflow/api/2.0/mlflow/runs/create"), json={"experiment_id": experiment}, timeout=10).json()["run"]["info"]["run_id"]
    assert session.post(stack.url("mlflow/api/2.0/mlflow/runs/log-metric"), json={"run_id": run, "key": "m", "value": 1.5, "timestamp": 0, "step": 0}, timeout=10).ok
    return run


def _stopped_cleanly(stack, code: int) -> None:
    assert code == 0, stack.tail()
    assert not processes_under(stack.state_dir), processes_under(stack.state_dir)
    for port in stack.ports.values():
        assert port_is_free(port), f"port {port} still taken after stop"
    log = (stack.state_dir / "logs" / "supervisord.log").read_text()
    last_run = log[log.rindex("supervisord started") :]
    stops = re.findall(r"stopped: (\w+)", last_run)
    assert stops.index("jupyter") < stops.index("mlflow"), f"stop order was {stops}"


def test_sigterm_stops_everything_and_restart_keeps_runs(stack):
    run = _log_run(stack)
    _stopped_cleanly(stack, stack.stop())
    stack.start()
    fetched = stack.session().get(stack.url("mlflow/api/2.0/mlflow/runs/get"), params={"run_id": run}, timeout=10)
    assert fetched.status_code == 200 and fetched.json()["run"]["data"]["metrics"][0]["value"] == 1.5


def test_ctrl_c_stops_everything(stack):
    stack.process.send_signal(signal.SIGINT)
    _stopped_cleanly(stack, stack.process.wait(60))
    stack.start()  # leave it running for the module's teardown


def test_stop_from_another_shell_stops_everything_in_order(stack, tmp_path):
    stopped = stack.second_shell("stop", cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    _stopped_cleanly(stack, stack.process.wait(60))
    again = stack.second_shell("stop", cwd=tmp_path)
    assert again.returncode == EXIT_DOWN and "not running" in again.stderr, again.stderr
    stack.start()
    # The banner names the state directory; only the first start of it made a new store, and the
    # root hint (when there is one) came with that first start only.
    banners = [line for line in stack.output.read_text().splitlines() if line.startswith("mlproxy: state directory: ")]
    assert banners[0] == f"mlproxy: state directory: {stack.state_dir} (new store: no runs yet)", banners
    assert banners[-1] == f"mlproxy: state directory: {stack.state_dir}", banners
    last_start = stack.output.read_text().rsplit("mlproxy: configuration: ", 1)[1]
    assert "running as root" not in last_start, last_start


def test_kill_9_of_up_leaves_nothing_running(stack):
    """A closed terminal that sent no SIGHUP, the OOM killer, a killed tmux pane."""
    stack.process.kill()
    stack.process.wait(30)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (processes_under(stack.state_dir) or not all(map(port_is_free, stack.ports.values()))):
        time.sleep(0.5)
    assert not processes_under(stack.state_dir), processes_under(stack.state_dir)
    assert all(port_is_free(port) for port in stack.ports.values()), stack.ports
    assert stack.mlproxy("status").returncode == EXIT_DOWN
    stack.start()  # a new `up` starts at once: nothing says "already running"


def _log_time(line: str) -> float:
    stamp, millis = line[:23].split(",")
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000


def test_mlflow_and_agent_start_without_waiting_for_supervisords_first_poll(tmp_path):
    # supervisord spawns autostart programs after its first poll, which waits a full second
    # unless a request wakes it; `up` wakes it at once. Nothing here touches the socket
    # (`mlproxy status` would wake supervisord and hide the delay).
    stack = Stack(tmp_path / "state").start(wait=False)
    log = stack.state_dir / "logs" / "supervisord.log"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "spawned: 'agent'" not in (log.read_text() if log.exists() else ""):
            time.sleep(0.05)
    finally:
        assert stack.stop() == 0
    lines = log.read_text().splitlines()
    started = _log_time(next(line for line in lines if "supervisord started with pid" in line))
    for program in ("mlflow", "agent"):
        spawned = next(line for line in lines if f"spawned: '{program}'" in line)
        assert _log_time(spawned) - started < 0.9, "\n".join(lines)
