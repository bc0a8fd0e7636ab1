"""`mlproxy doctor` on a healthy stack, a stopped one, and real misconfigurations of the kind
users hit: the proxy extension missing, and MLflow refusing the Host header."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest
import requests

from mlproxy_supervisor import credentials, doctor, launch
from mlproxy_supervisor.config import Settings
from tests.stack import Stack
from tests.support.ports import free_port

pytestmark = pytest.mark.integration


def test_healthy_stack_passes(shared_stack):
    result = shared_stack.mlproxy("doctor")
    assert result.returncode == 0, result.stdout
    assert "FAIL" not in result.stdout and "MLflow reachable by any hostname" in result.stdout


def test_stopped_stack_with_a_port_conflict_and_a_bad_config(tmp_path):
    # MLflow on TCP (listen = "tcp"): its port must be free. On its unix socket (the default), the
    # port only names the route /proxy/<port>/, and a process holding it is no conflict.
    stack = Stack(tmp_path / "state", env={"MLPROXY_MLFLOW__LISTEN": "tcp"})
    on_socket = Stack(tmp_path / "socket", **stack.ports)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", stack.mlflow_port))
        squatter.listen()
        result = stack.mlproxy("doctor")
        socket_result = on_socket.mlproxy("doctor")
    assert result.returncode == 1
    assert "stack running" in result.stdout and "mlproxy up" in result.stdout
    assert f"port {stack.mlflow_port} (mlflow.port)" in result.stdout and "fix:" in result.stdout
    assert "mlflow.port" not in socket_result.stdout and "ports free" in socket_result.stdout, socket_result.stdout
    broken = Stack(tmp_path / "other", config="[jupyter]\nprot = 1\n")
    result = broken.mlproxy("doctor")
    assert result.returncode == 1 and "jupyter.prot: unknown key" in result.stdout


def test_an_unreachable_database_is_named(tmp_path):
    with socket.socket() as closed:  # a port nothing listens on: bound, never listening
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        uri = f"postgresql+psycopg://ml:s3cret@127.0.0.1:{port}/mlflow"
        stack = Stack(tmp_path / "state", config=f'[mlflow]\nbackend_store_uri = "{uri}"\n')
        result = stack.mlproxy("doctor")
    assert result.returncode == 1
    line = next(line for line in result.stdout.splitlines() if "MLflow's database" in line)
    assert line.startswith("[FAIL]") and f"postgresql+psycopg://ml:***@127.0.0.1:{port}/mlflow" in line, result.stdout
    assert "Connection refused" in line and "s3cret" not in result.stdout
    assert f"start the database server on 127.0.0.1:{port}" in result.stdout


@pytest.fixture()
def bare_servers(tmp_path):
    """MLflow and Jupyter started by hand, the way people wire them without mlproxy; the test
    chooses which Jupyter extensions are enabled."""
    # On TCP, as such setups are: the extension finds MLflow's address from the same configuration.
    settings = Settings(state_dir=tmp_path, jupyter={"port": free_port()}, mlflow={"port": free_port(), "listen": "tcp"},
                        agent={"metrics_port": 0})  # fmt: skip
    settings.runtime_dir.mkdir(parents=True)
    settings.jupyter.root_dir.mkdir()
    token = credentials.ensure_token(settings.jupyter.token_file)
    credentials.write_private(settings.jupyter_token_copy, token)
    started = []

    def start(*extra_jupyter_args: str):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLPROXY_")}  # the shell's own, if any
        env.update(MLPROXY_STATE_DIR=str(tmp_path), MLPROXY_MLFLOW__PORT=str(settings.mlflow.port), MLPROXY_MLFLOW__LISTEN="tcp")
        for argv, extra in (launch.mlflow_command(settings), launch.jupyter_command(settings)):
            if "notebook" in argv:
                argv = [*argv, *extra_jupyter_args]
            started.append(subprocess.Popen(argv, env={**env, **extra}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{settings.mlflow_url}/health", timeout=1).ok and requests.get(f"{settings.jupyter_local_url}/api", timeout=1).ok:
                    return settings, token
            except requests.RequestException:  # not listening yet, or too busy starting to answer within 1 s
                pass
            time.sleep(0.2)
        raise AssertionError("bare servers did not come up")

    yield start
    for process in reversed(started):  # Jupyter first, as supervisord stops them
        process.terminate()
    for process in started:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise


def _failed(findings) -> dict[str, doctor.Finding]:
    return {finding.check: finding for finding in findings if not finding.ok}


def test_a_disabled_mlproxy_extension_leaves_nothing_to_fix(bare_servers):
    # jupyter-server-proxy loads mlproxy's entry point, which installs mlproxy's routes (the Host
    # rewrite, the origin check) on the running server even with the extension disabled.
    settings, token = bare_servers("--ServerApp.jpserver_extensions=mlproxy_supervisor.jupyter=False")
    assert _failed(doctor.live_checks(settings, token)) == {}


def test_missing_proxy_extension_shows_as_404(bare_servers):
    settings, token = bare_servers("--ServerApp.jpserver_extensions=mlproxy_supervisor.jupyter=False", "--ServerApp.jpserver_extensions=jupyter_server_proxy=False")
    failed = _failed(doctor.live_checks(settings, token))
    assert "jupyter-server-proxy loaded" in failed
    assert "jupyter server extension enable" in failed["jupyter-server-proxy loaded"].fix


def test_wrong_token_is_diagnosed(bare_servers):
    settings, _ = bare_servers()
    failed = _failed(doctor.live_checks(settings, "not-the-token-at-all"))
    assert "Jupyter accepts the token" in failed and "restart" in failed["Jupyter accepts the token"].fix
