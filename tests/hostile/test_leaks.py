"""The token leaks nowhere, and another local user can read nothing of the stack.

The token goes through every route in every form Jupyter accepts, and a Referer carrying it;
then it must not be in any process's argv, any log, the status document, the metrics, or any
answer. Another uid (nobody, via setpriv) can walk to the state directory but into nothing.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import requests

from tests.stack import cmdlines
from tests.support.hostile import mlflow_routes, unique

pytestmark = pytest.mark.hostile

NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


@pytest.fixture(scope="module")
def token_traffic(target) -> list[bytes]:
    """Requests carrying the token every way, through every spelling; their answers."""
    answers = []
    token = target.token
    forms = [
        (f"token={token}", {}), (f"%74oken={token}", {}), (f"tok%65n={token}", {}), (f"%2574oken={token}&token={token}", {}),
        ("", {"Authorization": f"token {token}"}), ("", {"Authorization": f"Bearer {token}"}),
        (f"token={token}", {"Referer": f"{target.origin}/mlflow/?token={token}"}),
        (f"token={token}", {"Cookie": f"username-127-0-0-1-{target.stack.jupyter_port + 1}=other; _xsrf=x"}),
    ]
    for route in mlflow_routes(target.stack.mlflow_port).values():
        for query, headers in forms:
            for endpoint in ("api/2.0/mlflow/experiments/search?max_results=1", "static-files//x", "no-such-page"):
                joiner = "&" if "?" in endpoint else "?"
                answer = target.raw("GET", f"{route}{endpoint}{joiner}{query}" if query else f"{route}{endpoint}", headers)
                answers.append(answer.body + json.dumps(answer.headers).encode())
    target.mlflow_log_after(0, unique("marker"))  # every line of the traffic is in MLflow's log now
    return answers


def test_token_not_in_mlflows_log(target, token_traffic):
    log = target.mlflow_log.read_text(errors="replace")
    assert "/static-files//x" in log or "static-files/x" in log, "the traffic never reached MLflow"
    assert target.token not in log


def test_token_not_in_any_log(target, token_traffic):
    for path in (target.stack.state_dir / "logs").glob("*"):
        assert target.token not in path.read_text(errors="replace"), path.name
    assert target.token not in target.stack.output.read_text(errors="replace").replace(f"?token={target.token}", ""), \
        "mlproxy up's output holds the token other than in the URL it prints"


def test_token_not_in_any_answer(target, token_traffic):
    leaked = [body[:200] for body in token_traffic if target.token.encode() in body]
    assert not leaked, leaked[:3]


def test_token_not_in_any_argv(target, token_traffic):
    holders = [f"{pid}: {command[:200]}" for pid, command in cmdlines().items() if target.token in command]
    assert not holders, holders


def test_token_not_in_status_or_metrics(target, token_traffic):
    status = target.stack.mlproxy("status", "--json")
    assert status.returncode == 0 and target.token not in status.stdout + status.stderr
    table = target.stack.mlproxy("status")
    assert target.token not in table.stdout + table.stderr
    metrics = requests.get(f"http://127.0.0.1:{target.stack.metrics_port}/metrics", timeout=30)
    assert metrics.status_code == 200 and "mlproxy_up" in metrics.text and target.token not in metrics.text
    assert target.token not in (target.stack.state_dir / "run" / "status.json").read_text()


def as_nobody(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NOBODY, *argv], capture_output=True, text=True, timeout=60, check=False)


def stack_files(target) -> list[Path]:
    state = target.stack.state_dir
    found = [state, *state.rglob("*")]
    names = {path.name for path in found}
    assert {"mlflow.db", "logs", "artifacts", "jupyter_token", "mlflow.log"} <= names, sorted(names)[:40]
    return found


def test_state_is_private_to_the_stacks_user(target, token_traffic):
    target.put_artifact(unique("private") + ".txt")  # at least one artifact file exists
    loose = []
    for path in stack_files(target):
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        if stat.S_IMODE(mode) & 0o077:
            loose.append(f"{oct(stat.S_IMODE(mode))} {path}")
    assert not loose, "readable or writable by others:\n" + "\n".join(loose)


@pytest.mark.parametrize("relative", ["", "mlflow.db", "jupyter_token", "logs/mlflow.log", "logs", "artifacts", "run"])
def test_another_user_reads_nothing(target, relative):
    path = target.stack.state_dir / relative
    assert path.exists(), path
    # Control: nobody can walk to the state directory, and reads a world-readable file there.
    control = target.stack.state_dir.parent / "control.txt"
    control.write_text("readable\n")
    control.chmod(0o644)
    assert as_nobody("cat", str(control)).stdout == "readable\n", "setpriv or the parent directory is broken"
    attempt = as_nobody("ls", "-la", str(path)) if path.is_dir() else as_nobody("cat", str(path))
    assert attempt.returncode != 0 and "Permission denied" in attempt.stderr, f"nobody read {path}: {attempt.stdout[:200]}"
    assert os.stat(path).st_uid == os.getuid()
