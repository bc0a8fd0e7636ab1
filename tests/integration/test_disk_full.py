"""The database and the artifacts on a small filesystem that fills up: the client gets a clear
error, `mlproxy status` says degraded and why, nothing stored is damaged, and the stack is READY
again by itself once space returns."""

from __future__ import annotations

import os
import subprocess

import pytest

from mlproxy_supervisor.store import sqlite
from tests.stack import Stack
from tests.support.mlflow_client import run_client

pytestmark = pytest.mark.integration

# log [MiB]: a run with a param, a metric and an artifact (1 MiB unless given); prints its id, or
# the error of the first call that failed. check: reads a run back (its 1 MiB artifact).
CLIENT = r"""
import json, os, sys, tempfile
os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
from mlflow.tracking import MlflowClient
client = MlflowClient()
if sys.argv[1] == "log":
    name = "disk-full"
    experiment = client.get_experiment_by_name(name)
    experiment = experiment.experiment_id if experiment else client.create_experiment(name)
    try:
        run = client.create_run(experiment).info.run_id
        client.log_param(run, "alpha", "0.5")
        client.log_metric(run, "loss", 0.25, step=1)
        path = os.path.join(tempfile.mkdtemp(), "weights.bin")
        with open(path, "wb") as out:
            for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 1):
                out.write(bytes(range(256)) * 4096)
        client.log_artifact(run, path)
        print(json.dumps({"run": run}))
    except Exception as error:
        print(json.dumps({"error": str(error)}))
else:
    run = client.get_run(sys.argv[2])
    local = client.download_artifacts(sys.argv[2], "weights.bin", tempfile.mkdtemp())
    intact = open(local, "rb").read() == bytes(range(256)) * 4096
    print(json.dumps({"params": run.data.params, "metrics": run.data.metrics, "artifact_intact": intact}))
"""


@pytest.fixture
def small_filesystem(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


def test_a_full_disk_is_reported_refused_clearly_and_recovered_from(small_filesystem, tmp_path):
    database = small_filesystem / "mlflow.db"
    config = f'[mlflow]\nbackend_store_uri = "sqlite:///{database}"\nartifacts_destination = "{small_filesystem}/artifacts"\n'
    stack = Stack(tmp_path / "state", config=config).start(timeout=300)

    def client(*args: str) -> dict:
        return run_client(CLIENT, stack.base, stack.token, *args, timeout=300)

    try:
        kept = client("log")["run"]
        stats = os.statvfs(small_filesystem)
        ballast = small_filesystem / "ballast"
        with open(ballast, "wb") as out:  # leave about 512 KiB: less than one upload
            os.posix_fallocate(out.fileno(), 0, stats.f_bavail * stats.f_frsize - 512 * 1024)

        degraded = stack.wait_for(lambda s: s["overall"] == "degraded" and s.get("storage_problems"), timeout=60, what="degraded: disk full")
        assert any(str(small_filesystem) in problem for problem in degraded["storage_problems"])
        shown = stack.mlproxy("status")
        assert shown.returncode == 1 and "disk nearly full" in shown.stdout and str(small_filesystem) in shown.stdout

        # 32 MiB where 512 KiB are free: MLflow answers 507 and hangs up while the client is still
        # sending, and that answer, not a 502, is what the client must get.
        refused = client("log", "32")
        assert "error" in refused, "a write to a full disk must fail"
        message = refused["error"]
        assert "No space left on device" in message or "database or disk is full" in message, message
        assert "<!doctype html>" not in message.lower(), "the cause, not a bare error page"

        ballast.unlink()  # space returns; nobody touches the stack
        stack.wait_for(lambda s: s["overall"] == "ready", timeout=120, what="ready once space returned")
        again = client("log")
        assert "run" in again, again
        for run in (kept, again["run"]):
            assert client("check", run) == {"params": {"alpha": "0.5"}, "metrics": {"loss": 0.25}, "artifact_intact": True}
        assert sqlite.integrity_problems(database) == []
    finally:
        assert stack.stop() == 0
