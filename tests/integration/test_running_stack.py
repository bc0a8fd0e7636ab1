"""The running stack is the one source of truth: resolved once by `up`, read by every process and
by CLI calls from other shells, whatever their environment or working directory says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.stack import Stack

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def relative_stack(tmp_path_factory):
    """A stack started with a relative state_dir, from the directory that holds it."""
    base = tmp_path_factory.mktemp("rel")
    stack = Stack(base / "reldata", env={"MLPROXY_STATE_DIR": "reldata"})
    stack.start(timeout=240)
    yield stack
    assert stack.stop() == 0


def other_shell(stack: Stack, *args: str, cwd: Path = Path("/")) -> subprocess.CompletedProcess:
    """`mlproxy ARGS` from another terminal: it names the state directory (absolute) and nothing
    else, and even has a stale port variable that the running stack must override."""
    env = {k: v for k, v in stack.env.items() if not k.startswith("MLPROXY_")}
    env["MLPROXY_STATE_DIR"] = str(stack.state_dir)
    env["MLPROXY_JUPYTER__PORT"] = "8888"  # what a fresh shell might say; the stack runs elsewhere
    return subprocess.run([sys.executable, "-m", "mlproxy_supervisor", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def test_relative_state_dir_is_resolved_against_ups_directory(relative_stack):
    state = relative_stack.state_dir
    resolved = json.loads((state / "run" / "resolved.json").read_text())
    assert resolved["settings"]["state_dir"] == str(state)
    assert (state / "run" / "resolved.json").stat().st_mode & 0o777 == 0o600
    assert not (state / "reldata").exists(), "a process resolved the relative path a second time"
    response = requests.get(relative_stack.url("mlflow/health"), headers={"Authorization": f"token {relative_stack.token}"}, timeout=30)
    assert response.status_code == 200 and response.text.startswith("OK")


def test_url_status_and_doctor_from_another_shell_describe_the_running_stack(relative_stack):
    url = other_shell(relative_stack, "url")
    assert url.returncode == 0, url.stderr
    assert url.stdout.strip() == f"http://127.0.0.1:{relative_stack.jupyter_port}/mlflow/?token={relative_stack.token}"
    status = other_shell(relative_stack, "status", "--json")
    assert status.returncode == 0, status.stdout
    assert json.loads(status.stdout)["urls"]["mlflow"] == f"http://127.0.0.1:{relative_stack.jupyter_port}/mlflow/"
    doctor = other_shell(relative_stack, "doctor")
    assert doctor.returncode == 0, doctor.stdout
    assert "FAIL" not in doctor.stdout
    assert "the running stack" in doctor.stdout
    ctl = other_shell(relative_stack, "ctl", "status")
    assert "mlflow" in ctl.stdout and "RUNNING" in ctl.stdout, ctl.stdout + ctl.stderr


def test_programs_get_the_resolved_file_not_the_variables(relative_stack):
    """Nothing under supervisord reads MLPROXY_* again: they are not even in its environment."""
    for name in ("agent", "mlflow", "jupyter"):
        pid = relative_stack.supervisor.processes()[name].pid
        environ = dict(
            item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in item
        )
        ours = {key: value for key, value in environ.items() if key.startswith("MLPROXY_")}
        assert ours == {"MLPROXY_RESOLVED_CONFIG": str(relative_stack.state_dir / "run" / "resolved.json")}, name
