"""The MLflow route is never served by jupyter-server-proxy's own handler (no origin check),
however mlproxy was installed: an editable install (`pip install -e .`, this venv), which leaves
out the data file that enables mlproxy's extension, or a wheel; in a user's own `jupyter lab`
started by hand in the same environment, a cross-origin write to /mlflow/ is refused by mlproxy's
handler and creates nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.stack import ROOT
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

EXTENSION_DATA_FILE = Path("etc/jupyter/jupyter_server_config.d/mlproxy_supervisor.json")
SITE_PACKAGES = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"


@pytest.fixture(scope="module")
def wheel_prefix(tmp_path_factory) -> Path:
    """mlproxy built as a wheel and installed into a prefix of its own (the venv's editable install
    stays: -I), as `pip install mlproxy.whl` would lay it out."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"  # built from a copy: the build leaves build/ and egg-info behind
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "tests", "benchmarks", "docs"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(work / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    wheel = next((work / "dist").glob("mlproxy-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "-I", "--prefix", str(work / "prefix"), str(wheel)], check=True, capture_output=True, timeout=300)
    assert (work / "prefix" / EXTENSION_DATA_FILE).is_file()
    return work / "prefix"


def start_jupyter_lab(tmp_path: Path, token: str, env: dict[str, str]) -> tuple[subprocess.Popen, str, Path]:
    """`jupyter lab` as a user starts it by hand, with only their own Jupyter settings."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MLPROXY_", "JUPYTER"))}
    home = tmp_path / "home"
    environment.update(
        JUPYTER_TOKEN=token, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"), JUPYTERLAB_SETTINGS_DIR=str(home / "lab-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "lab-workspaces"), **env,
    )  # fmt: skip
    argv = [str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser", f"--port={port}", "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={tmp_path}"] + (["--allow-root"] if os.geteuid() == 0 else [])  # fmt: skip
    log = tmp_path / "jupyter-lab.log"
    with open(log, "w") as output:
        process = subprocess.Popen(argv, env=environment, cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"{base}/api", timeout=5).status_code == 200:
                return process, base, log
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    process.kill()
    raise AssertionError(f"jupyter lab did not answer within 120 s:\n{log.read_text()[-3000:]}")


@pytest.mark.parametrize("install", ["editable", "wheel"])
def test_a_users_own_jupyter_lab_refuses_a_cross_origin_write_to_mlflow(shared_stack, tmp_path, install, request):
    if install == "editable":
        env = {}
        assert not (Path(sys.prefix) / EXTENSION_DATA_FILE).exists(), "this venv is not an editable install's"
    else:
        prefix = request.getfixturevalue("wheel_prefix")
        env = {"PYTHONPATH": str(prefix / SITE_PACKAGES), "JUPYTER_CONFIG_PATH": str(prefix / "etc" / "jupyter")}
    # The user's shell names their stack (so even an mlproxy without the running-stack record finds it).
    env["MLPROXY_STATE_DIR"] = str(shared_stack.state_dir)
    token = uuid.uuid4().hex
    process, base, log = start_jupyter_lab(tmp_path, token, env)
    try:
        session = requests.Session()
        session.headers["Authorization"] = f"token {token}"
        for route in ("mlflow", f"proxy/{shared_stack.mlflow_port}"):
            name = f"cross-origin-{install}-{uuid.uuid4().hex[:8]}"
            # Another port of the same host: the same site, which MLflow itself trusts.
            attack = session.post(f"{base}/{route}/api/2.0/mlflow/experiments/create", json={"name": name},
                                  headers={"Origin": f"http://127.0.0.1:{free_port()}"}, timeout=30)  # fmt: skip
            assert attack.status_code == 403 and "cross-origin request from" in attack.text, (route, attack.status_code, attack.text[:300])
            created = shared_stack.session().get(shared_stack.url("mlflow/api/2.0/mlflow/experiments/get-by-name"),
                                                 params={"experiment_name": name}, timeout=30)  # fmt: skip
            assert created.status_code == 404, f"{route}: the cross-origin write created {name}"
        # The same write from Jupyter's own origin goes through: the route does reach MLflow.
        own = session.post(f"{base}/mlflow/api/2.0/mlflow/experiments/create", json={"name": f"own-{install}-{uuid.uuid4().hex[:8]}"},
                           headers={"Origin": base}, timeout=30)  # fmt: skip
        assert own.status_code == 200, own.text[:300]
    finally:
        process.terminate()
        process.wait(60)
    installed = [line for line in log.read_text().splitlines() if "mlproxy: MLflow on" in line]
    assert len(installed) == 1, installed  # once, however many hooks asked
