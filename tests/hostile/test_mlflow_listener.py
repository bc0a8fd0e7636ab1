"""MLflow's own listener reaches nobody but the stack's user: no TCP port at all, and a unix socket in
the 0700 runtime directory.

A page on another local origin (in a chromium where the user is logged in to Jupyter) and a
process of another uid (nobody, via setpriv) each try to read and write MLflow directly. Each
attempt must fail to connect, and leave nothing behind. Controls prove the attempts are real: the
same script as the stack's user writes, and the same page reaches the route's login.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from mlproxy_supervisor import procfs
from tests.browser.browser import launch, log_in
from tests.hostile.test_browser_origins import attacker_site
from tests.support.hostile import unique

pytestmark = pytest.mark.hostile

NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
# Creates an experiment over MLflow's socket; prints the outcome. Run by the system python, which
# uid 65534 can execute (the venv's may sit in a directory it cannot enter).
CREATE_OVER_SOCKET = """
import http.client, json, socket, sys
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sys.argv[1])
connection = Unix("127.0.0.1")
try:
    connection.request("POST", "/api/2.0/mlflow/experiments/create", json.dumps({"name": sys.argv[2]}),
                       {"Content-Type": "application/json"})
    print("status", connection.getresponse().status)
except OSError as error:
    print("refused", type(error).__name__, error)
    sys.exit(1)
"""


def tcp_listeners(pid: int) -> list[str]:
    """host:port of every TCP socket process pid listens on."""
    mine = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            mine.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and f"socket:[{fields[9]}]" in mine:
                found.append(f"{fields[1]} ({table})")
    return found


def test_mlflow_holds_no_tcp_listener(target):
    mlflow = target.stack.pid("mlflow")
    assert tcp_listeners(mlflow) == [], f"MLflow (pid {mlflow}) listens on TCP: {tcp_listeners(mlflow)}"
    assert procfs.listening_pids(target.stack.mlflow_port) == [], f"something listens on MLflow's route port {target.stack.mlflow_port}"
    for host in ("127.0.0.1", "::1"):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.settimeout(10)
            assert probe.connect_ex((host, target.stack.mlflow_port)) != 0, f"{host}:{target.stack.mlflow_port} accepts connections"
    # What it does listen on: the socket, in the stack's private runtime directory.
    listening = target.stack.mlflow_socket
    assert stat.S_ISSOCK(listening.stat().st_mode) and stat.S_IMODE(listening.stat().st_mode) == 0o600
    assert stat.S_IMODE(listening.parent.stat().st_mode) == 0o700 and listening.parent.stat().st_uid == os.getuid()


def run_script(prefix: list[str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, "/usr/bin/python3", "-c", CREATE_OVER_SOCKET, *args], check=False, capture_output=True, text=True, timeout=60)


def test_another_uid_cannot_connect_to_mlflows_socket(target):
    name = unique("nobody-over-socket")
    attempt = run_script(NOBODY, str(target.stack.mlflow_socket), name)
    assert attempt.returncode == 1 and "refused PermissionError" in attempt.stdout, attempt.stdout + attempt.stderr
    assert not target.experiment_exists(name), "uid 65534 created an experiment"
    listing = subprocess.run([*NOBODY, "ls", str(target.stack.mlflow_socket.parent)], check=False, capture_output=True, text=True, timeout=60)
    assert listing.returncode != 0 and "Permission denied" in listing.stderr
    # Control: the same script, as the stack's own user, does write.
    control = unique("owner-over-socket")
    done = run_script([], str(target.stack.mlflow_socket), control)
    assert done.stdout.strip() == "status 200", done.stdout + done.stderr
    assert target.experiment_exists(control)


# A page may try MLflow at any loopback spelling of its port; each must fail to connect.
DIRECT_ORIGINS = ["http://127.0.0.1:{p}", "http://localhost:{p}", "http://[::1]:{p}"]
DIRECT_ATTEMPTS = [
    ("create-json", "POST", "/ajax-api/2.0/mlflow/experiments/create", "cors"),
    ("create-simple", "POST", "/ajax-api/2.0/mlflow/experiments/create", "no-cors"),
    ("upload-artifact", "POST", "/ajax-api/2.0/mlflow/upload-artifact?run_uuid={run}&path={name}.txt", "no-cors"),
    ("read-list", "GET", "/ajax-api/2.0/mlflow/experiments/search?max_results=100", "cors"),
]
DIRECT_CASES = [(origin, attempt[0]) for origin in range(len(DIRECT_ORIGINS)) for attempt in DIRECT_ATTEMPTS]

PROBE = """
async (cases) => {
  const results = {};
  for (const c of cases) {
    const init = {method: c.method, credentials: "include", mode: c.mode};
    if (c.method === "POST") { init.body = c.body; init.headers = {"Content-Type": c.mode === "cors" ? "application/json" : "text/plain"}; }
    try { const answer = await fetch(c.url, init); results[c.id] = "status " + answer.status + " " + (c.mode === "cors" ? await answer.text() : ""); }
    catch (error) { results[c.id] = "error " + error; }
  }
  return results;
}
"""


@pytest.fixture(scope="module")
def direct_attack(target, playwright, tmp_path_factory):
    cases = []
    for origin, name in DIRECT_CASES:
        case_id = unique(f"direct-{origin}-{name}")
        _, method, path, mode = next(a for a in DIRECT_ATTEMPTS if a[0] == name)
        url = DIRECT_ORIGINS[origin].format(p=target.stack.mlflow_port) + path.format(run=target.run_id, name=case_id)
        cases.append({"id": case_id, "key": (origin, name), "method": method, "mode": mode, "url": url,
                      "body": json.dumps({"name": case_id}) if "create" in name else "written by another site"})
    # Control: the route, from the same page, answers (the login refusal): the page can fetch.
    cases.append({"id": "control", "key": "control", "method": "GET", "mode": "no-cors", "url": f"{target.origin}/mlflow/", "body": None})
    site = attacker_site(target.attacker_origin_port)
    try:
        context = launch(playwright, tmp_path_factory.mktemp("hostile-direct-chromium"))
        try:
            log_in(context.new_page(), target.origin, target.token, "/mlflow/")
            attacker = context.new_page()
            attacker.goto(site.url)
            results = attacker.evaluate(PROBE, cases)
        finally:
            context.close()
    finally:
        site.close()
    return {case["key"]: (case, results[case["id"]]) for case in cases}


@pytest.mark.browser
def test_the_page_itself_can_fetch(direct_attack):
    _, result = direct_attack["control"]
    assert result.startswith("status"), result


@pytest.mark.browser
@pytest.mark.parametrize(("origin", "attempt"), DIRECT_CASES)
def test_page_on_another_origin_cannot_reach_mlflow_directly(target, direct_attack, origin, attempt):
    case, result = direct_attack[(origin, attempt)]
    assert result.startswith("error") and "Failed to fetch" in result, f"{case['url']}: {result}"
    assert not target.experiment_exists(case["id"]), "an experiment was created"
    assert not target.files_named(case["id"]), "an artifact was written"
