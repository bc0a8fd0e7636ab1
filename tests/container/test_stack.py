"""One container of the image, run as a user would (`podman run -d -p ...:8888 -v VOLUME:...`),
with a token it generates itself. What the user notices: the healthcheck, the route from the
host, what is exposed, the logs, the processes."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.container.conftest import authorized, measure

pytestmark = pytest.mark.container

EXPERIMENTS = "api/2.0/mlflow/experiments/search?max_results=5"


@pytest.fixture(scope="module")
def stack(make_volume, start_container):
    container = start_container(make_volume(), wait=False)
    started = time.monotonic()
    container.early_health = container.healthcheck()  # the stack needs seconds; this runs at once
    container.wait_healthy()
    measure("podman run to healthy (fresh volume)", f"{time.monotonic() - started:.1f} s")
    container.token = container.exec("cat", "/var/lib/mlproxy/jupyter_token").stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{48}", container.token), "no generated token in the state volume"
    return container


def processes(container) -> list[dict]:
    """Every process in the container: pid, ppid, state, uid and argv, read from /proc inside."""
    script = r"""
import json, os
found = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
        status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        continue
    fields = stat[stat.rindex(")") + 2:].split()
    found.append({"pid": int(pid), "state": fields[0], "ppid": int(fields[1]), "uid": int(status["Uid"].split()[0]),
                  "argv": [arg.decode(errors="replace") for arg in argv if arg]})
print(json.dumps(found))
"""
    result = container.exec("python3", "-c", script)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # includes the python3 that read them, a child of `podman exec`


def test_healthcheck_is_unhealthy_until_the_route_works_then_healthy(stack):
    code, output = stack.early_health
    assert code == 1, f"healthcheck passed before the stack could have started: {output}"
    assert stack.health_status() == "healthy"
    last = stack.state()["Health"]["Log"][-1]
    assert last["ExitCode"] == 0 and "mlproxy: ready" in last["Output"], last


def test_healthcheck_follows_the_route_not_just_the_processes(stack):
    # Stop MLflow the way an operator would; Jupyter keeps running and answering on 8888.
    assert stack.exec("mlproxy", "ctl", "stop", "mlflow").returncode == 0
    try:
        deadline = time.monotonic() + 30
        while stack.healthcheck()[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        code, output = stack.healthcheck()
        assert code == 1, f"still healthy 30 s after MLflow stopped: {output}"
        session = authorized(stack.token)
        assert session.get(f"{stack.base}/api/status", timeout=10).status_code == 200  # Jupyter is up
        assert session.get(f"{stack.base}/mlflow/health", timeout=10).status_code != 200  # the route is not
    finally:
        assert stack.exec("mlproxy", "ctl", "start", "mlflow").returncode == 0
    measure("healthy again after MLflow restart", f"{stack.wait_healthy(timeout=120):.1f} s")


def test_mlflow_route_works_from_the_host_with_the_token(stack):
    session = authorized(stack.token)
    health = session.get(f"{stack.base}/mlflow/health", timeout=10)
    assert (health.status_code, health.text) == (200, "OK")
    search = session.get(f"{stack.base}/mlflow/{EXPERIMENTS}", timeout=10)
    assert search.status_code == 200 and "Default" in search.text
    assert session.get(f"{stack.base}/proxy/5001/health", timeout=10).text == "OK"
    page = session.get(f"{stack.base}/mlflow/", timeout=10)
    assert page.status_code == 200 and "<html" in page.text.lower()
    # The token is what lets a request through.
    anonymous = authorized("0" * 48)
    refused = anonymous.get(f"{stack.base}/mlflow/{EXPERIMENTS}", timeout=10, allow_redirects=False)
    assert refused.status_code == 401 and "MLFLOW_TRACKING_TOKEN" in refused.text, refused.status_code


def test_only_jupyter_is_published_and_mlflow_listens_on_loopback(stack):
    ports = stack.inspect()["NetworkSettings"]["Ports"]
    published = {port: bindings for port, bindings in ports.items() if bindings}
    assert list(published) == ["8888/tcp"], ports
    # Listening sockets inside the container, from /proc/net/tcp{,6}: (address, port).
    script = r"""
import json
found = []
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(table).read().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A":
            address, port = fields[1].rsplit(":", 1)
            found.append([address, int(port, 16)])
print(json.dumps(found))
"""
    listening = {(address, port) for address, port in json.loads(stack.exec("python3", "-c", script).stdout)}
    loopback = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it
    # MLflow listens on its unix socket only: nothing on its route's port 5001, in or out of the container.
    assert not {address for address, port in listening if port == 5001}, listening
    assert {address for address, port in listening if port == 9181} == {loopback}, listening  # metrics
    assert ("00000000", 8888) in listening  # Jupyter on all interfaces: the one published port


def test_program_logs_reach_podman_logs_once_each(stack):
    logs = stack.logs()
    for what, pattern in [
        ("supervisord", r"INFO supervisord started with pid \d+"),
        ("agent", r"agent started \(pid \d+\)"),
        ("MLflow", r"Uvicorn running on socket /\S+/mlflow\.sock"),
        ("Jupyter", r"Jupyter Server [\d.]+ is running at"),
        ("mlproxy up", r"mlproxy: ready in [\d.]+ s"),
    ]:
        assert re.search(pattern, logs), f"no {what} output in podman logs"
    assert len(re.findall(r"supervisord started with pid", logs)) == 1, "supervisord lines are duplicated"


def test_generated_token_is_printed_once_in_the_log_and_nowhere_else(stack):
    logs = stack.logs()
    assert logs.count(stack.token) == 1, f"token printed {logs.count(stack.token)} times"
    assert f"/mlflow/?token={stack.token}" in logs
    assert stack.token not in json.dumps(stack.inspect())  # env, labels, health check output
    for process in processes(stack):
        assert not any(stack.token in arg for arg in process["argv"]), f"token in argv of {process}"


def test_tini_is_pid_1_and_nothing_runs_as_root(stack):
    everything = processes(stack)
    by_pid = {p["pid"]: p for p in everything}
    assert by_pid[1]["argv"][:3] == ["/usr/bin/tini", "--", "mlproxy"]
    up = [p for p in everything if p["ppid"] == 1 and p["argv"][-1:] == ["up"]]
    assert len(up) == 1, "mlproxy up is not tini's child"
    assert {p["uid"] for p in everything} == {1000}, [(p["pid"], p["uid"], p["argv"][:3]) for p in everything]


def test_orphans_of_a_killed_jupyter_do_not_linger_as_zombies(stack):
    session = authorized(stack.token)
    kernel = session.post(f"{stack.base}/api/kernels", json={"name": "python3"}, timeout=30)
    assert kernel.status_code == 201, kernel.text
    deadline = time.monotonic() + 60
    while not (kernels := [p for p in processes(stack) if "ipykernel_launcher" in " ".join(p["argv"])]):
        assert time.monotonic() < deadline, "kernel process never appeared"
        time.sleep(0.5)
    jupyter = next(p for p in processes(stack) if p["argv"][1:3] == ["-m", "notebook"])
    kernel_pid = kernels[0]["pid"]
    stack.exec("python3", "-c", f"import os, signal; os.kill({jupyter['pid']}, signal.SIGKILL)")
    stack.wait_healthy(timeout=120)  # supervisord and the agent bring Jupyter back
    # The kernel's parent is gone: it exits, and whoever adopted it must reap it.
    deadline = time.monotonic() + 30
    while (left := [p for p in processes(stack) if p["pid"] == kernel_pid or p["state"] == "Z"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"left behind after Jupyter was killed: {left}"


def test_a_frozen_supervisord_is_replaced_inside_the_container(stack):
    """Docker and podman restart nothing for an unhealthy container: `mlproxy up`, tini's child,
    replaces a frozen supervisord and the programs it ran itself (watchdog.py). Last in the module:
    every process but tini and `up` is new afterwards."""
    everything = processes(stack)
    frozen = next(p["pid"] for p in everything if p["argv"][1:3] == ["-m", "supervisor.supervisord"])
    programs = [p["pid"] for p in everything if p["ppid"] == frozen]
    stack.exec("python3", "-c", f"import os, signal; os.kill({frozen}, signal.SIGSTOP)")
    started = time.monotonic()

    def replaced() -> bool:
        now = processes(stack)
        old = [p for p in now if p["pid"] in (frozen, *programs) and p["state"] != "Z"]
        return not old and any(p["argv"][1:3] == ["-m", "supervisor.supervisord"] for p in now)

    while not replaced():
        assert time.monotonic() - started < 120, "the frozen supervisord was not replaced within 120 s"
        time.sleep(0.5)
    stack.wait_healthy(timeout=120)
    measure("healthy again after SIGSTOP of supervisord", f"{time.monotonic() - started:.1f} s")
    session = authorized(stack.token)
    assert session.get(f"{stack.base}/mlflow/{EXPERIMENTS}", timeout=30).status_code == 200
    assert "is frozen: socket unanswered" in stack.logs()
