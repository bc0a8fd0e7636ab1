"""Client side of the system tests, run inside the container by the installation's Python
(/opt/mlproxy/bin/python inside.py COMMAND ...); its last line of output is one JSON document.

It talks to the stack the way a user on the machine would: through Jupyter's port, with the
token from the state directory (root may read it, as `mlproxy url` does).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import requests

from mlproxy_supervisor import procfs  # installed in the container's venv

BASE = "http://127.0.0.1:8888"
TOKEN_FILE = Path("/var/lib/mlproxy/jupyter_token")
EXPERIMENT = "system-test"
STACK_WORDS = ("mlproxy", "supervisord", "mlflow", "jupyter", "uvicorn", "ipykernel")


def token() -> str:
    return TOKEN_FILE.read_text().strip()


def route() -> dict:
    """The three ways to MLflow through Jupyter, with and without the token."""
    auth = {"Authorization": f"token {token()}"}
    result = {}
    for path in ("mlflow/health", "proxy/5001/health", "mlflow/api/2.0/mlflow/experiments/search?max_results=1"):
        with_token = requests.get(f"{BASE}/{path}", headers=auth, timeout=10)
        without = requests.get(f"{BASE}/{path}", timeout=10, allow_redirects=False)
        result[path] = {"status": with_token.status_code, "body": with_token.text[:80], "without_token": without.status_code}
    return result


def _client():
    os.environ["MLFLOW_TRACKING_URI"] = f"{BASE}/mlflow"
    os.environ["MLFLOW_TRACKING_TOKEN"] = token()
    from mlflow import MlflowClient

    return MlflowClient()


def log_runs(count: str) -> dict:
    client = _client()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    ids = []
    for number in range(int(count)):
        run = client.create_run(experiment_id, run_name=f"run-{number}")
        client.log_metric(run.info.run_id, "value", number)
        client.set_terminated(run.info.run_id)
        ids.append(run.info.run_id)
    return {"logged": ids}


def experiment(name: str) -> dict:
    return {"found": _client().get_experiment_by_name(name) is not None}


def list_runs() -> dict:
    client = _client()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return {"runs": []}
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return {"runs": sorted(run.info.run_id for run in runs)}


def kernel(code_file: str) -> dict:
    """Start a kernel through Jupyter (so it runs inside the service's sandbox), run the code."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "support"))  # /mnt/support in the container
    from kernel_client import execute

    session = requests.Session()
    session.headers["Authorization"] = f"token {token()}"
    started = session.post(f"{BASE}/api/kernels", json={"name": "python3"}, timeout=60)
    started.raise_for_status()
    kernel_id = started.json()["id"]
    try:
        status, output = asyncio.run(execute(BASE, token(), kernel_id, Path(code_file).read_text(), timeout=120))
    finally:
        session.delete(f"{BASE}/api/kernels/{kernel_id}", timeout=60)
    return {"status": status, "output": output}


def processes() -> dict:
    """Every process whose command line names a part of the stack."""
    found = {}
    for pid in procfs.pids():
        command = procfs.command_line(pid)
        if pid != os.getpid() and command is not None and any(word in command for word in STACK_WORDS) and "inside.py" not in command:
            found[str(pid)] = command
    return {"processes": found}


COMMANDS = {"route": route, "log-runs": log_runs, "list-runs": list_runs, "experiment": experiment, "kernel": kernel, "processes": processes}

if __name__ == "__main__":
    print(json.dumps(COMMANDS[sys.argv[1]](*sys.argv[2:])))
