"""The running stack is the one source of truth: resolved once by `up`, read by every process and
by CLI calls from other shells, whatever their environment or working directory says."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from mlproxy_supervisor.exits import EXIT_CONFIG, EXIT_DOWN
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


# --- a second shell of the stack's user: another directory, no MLPROXY_* variables -----------------

def test_an_invalid_mlproxy_toml_in_the_directory_does_not_hide_the_running_stack(shared_stack, tmp_path):
    (tmp_path / "mlproxy.toml").write_text("[jupyter]\nport = 'not a port'\n")
    status = shared_stack.second_shell("status", "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["urls"]["mlflow"] == f"{shared_stack.base}/mlflow/"


def test_config_show_url_and_env_describe_the_running_stack(shared_stack, tmp_path):
    shown = shared_stack.second_shell("config", "show", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    config = json.loads(shown.stdout[shown.stdout.index("{"):])
    ports = (config["jupyter"]["port"], config["mlflow"]["port"], config["agent"]["metrics_port"])
    assert ports == (shared_stack.jupyter_port, shared_stack.mlflow_port, shared_stack.metrics_port), shown.stdout[:300]
    url = shared_stack.second_shell("url", cwd=tmp_path)
    assert (url.returncode, url.stdout.strip()) == (0, f"{shared_stack.base}/mlflow/?token={shared_stack.token}"), url.stderr
    env = shared_stack.second_shell("env", "--json", cwd=tmp_path)
    assert env.returncode == 0, env.stderr
    assert json.loads(env.stdout) == {"MLFLOW_TRACKING_URI": f"{shared_stack.base}/mlflow", "MLFLOW_TRACKING_TOKEN": shared_stack.token}


LOG_A_RUN = """
import json, mlflow
mlflow.set_experiment("env-%s")
with mlflow.start_run() as run:
    mlflow.log_metric("loss", 0.25)
print(json.dumps({"uri": mlflow.get_tracking_uri(), "run": run.info.run_id}))
"""


def test_eval_mlproxy_env_points_a_process_the_stack_did_not_start_at_it(shared_stack, tmp_path):
    """nbconvert, papermill, cron, an ssh shell: without the variables MLflow logs to ./mlflow.db."""
    mlproxy = Path(sys.executable).with_name("mlproxy")
    script = LOG_A_RUN % uuid.uuid4().hex[:8]
    command = f'eval "$({mlproxy} env)" && {sys.executable} -c {shlex.quote(script)}'
    env = {k: v for k, v in shared_stack.env.items() if not k.startswith(("MLPROXY_", "MLFLOW_"))}
    result = subprocess.run(["sh", "-c", command], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    logged = json.loads(result.stdout.strip().splitlines()[-1])
    assert logged["uri"] == f"{shared_stack.base}/mlflow"
    assert sorted(path.name for path in tmp_path.iterdir()) == [], "MLflow wrote to the working directory"
    run = shared_stack.session().get(shared_stack.url("mlflow/api/2.0/mlflow/runs/get"), params={"run_id": logged["run"]}, timeout=30)
    assert run.status_code == 200 and run.json()["run"]["data"]["metrics"][0]["value"] == 0.25, run.text


def test_url_env_status_and_config_show_say_down_when_no_stack_runs(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLPROXY_", "XDG_"))}
    env.update(HOME=str(tmp_path), XDG_RUNTIME_DIR=str(tmp_path / "run"), MLPROXY_STATE_DIR=str(tmp_path / "never-started"))
    for command in (("url",), ("env",), ("status",), ("config", "show"), ("stop",)):
        result = subprocess.run([sys.executable, "-m", "mlproxy_supervisor", *command], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert result.returncode == EXIT_DOWN, (command, result.stdout, result.stderr)
        if command[0] in ("url", "env"):
            assert result.stdout == "" and "not running" in result.stderr, (command, result.stdout, result.stderr)


def test_logs_of_one_program_all_programs_and_following(shared_stack, tmp_path):
    mlflow = shared_stack.second_shell("logs", "mlflow", "-n", "5", cwd=tmp_path)
    assert mlflow.returncode == 0 and 0 < len(mlflow.stdout.splitlines()) <= 5, mlflow.stdout + mlflow.stderr
    every = shared_stack.second_shell("logs", "-n", "3", cwd=tmp_path)
    assert {"[supervisord]", "[agent]", "[mlflow]", "[jupyter]"} <= {line.split(" ", 1)[0] for line in every.stdout.splitlines()}, every.stdout
    unknown = shared_stack.second_shell("logs", "mlfow", cwd=tmp_path)
    assert unknown.returncode == EXIT_CONFIG and "mlflow, jupyter" in unknown.stderr, unknown.stderr
    env = {k: v for k, v in shared_stack.env.items() if not k.startswith("MLPROXY_")}
    follower = subprocess.Popen([sys.executable, "-m", "mlproxy_supervisor", "logs", "mlflow", "-f", "-n", "0"], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        name = f"followed-{uuid.uuid4().hex[:8]}"
        lines: list[str] = []

        def read() -> None:
            for line in follower.stdout:
                lines.append(line)

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("experiments/create" in line for line in lines):
            shared_stack.session().post(shared_stack.url("mlflow/api/2.0/mlflow/experiments/create"), json={"name": f"{name}-{time.monotonic()}"}, timeout=30)
            time.sleep(1)
        assert any("experiments/create" in line for line in lines), lines[-10:]
    finally:
        follower.terminate()
        follower.wait(30)
