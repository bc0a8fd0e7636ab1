"""Scale-out: PostgreSQL for runs, an S3 store for artifacts (Ceph's radosgw, see
tests/support/s3.py), two workers, and two mlproxy "hosts" sharing both stores.

One PostgreSQL, one S3 server and two stacks serve the whole module (CI time); each test uses
experiments of its own, and the tests that take a store away bring it back before they end.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

from mlproxy_supervisor.credentials import write_private
from tests.integration.test_clients import BIG_ARTIFACT
from tests.stack import Stack, cmdlines
from tests.support.mlflow_client import run_client
from tests.support.ports import free_port
from tests.support.postgres import Postgres, binaries
from tests.support.s3 import S3Server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(binaries() is None, reason="PostgreSQL is not installed (apt-get install postgresql)"),
    pytest.mark.skipif(not S3Server.installed(), reason="Ceph is not installed (scripts/setup installs it, as root)"),
]

def host_config(postgres: Postgres, s3: S3Server, credentials_file: str | None = None) -> str:
    lines = [
        "[mlflow]",
        f'backend_store_uri = "{postgres.uri}"',
        f'artifacts_destination = "s3://{s3.bucket}/mlflow"',
        f's3_endpoint_url = "{s3.endpoint}"',
        "workers = 2",
    ]
    if credentials_file:
        lines.append(f'credentials_file = "{credentials_file}"')
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def stores():
    postgres = Postgres(free_port()).init()
    postgres.start()
    s3 = S3Server(free_port(span=S3Server.PORTS)).start()
    yield postgres, s3
    s3.close()
    postgres.stop()


@pytest.fixture(scope="module")
def hosts(stores, tmp_path_factory):
    """Host A reads the S3 keys from a 0600 credentials file, host B from its environment."""
    postgres, s3 = stores
    root = tmp_path_factory.mktemp("hosts")
    secrets = root / "a-secrets"
    write_private(secrets, "".join(f"{name}={value}\n" for name, value in s3.environment.items() if name.startswith("AWS_") and "REGION" not in name))
    a = Stack(root / "a", config=host_config(postgres, s3, str(secrets)), env={"AWS_DEFAULT_REGION": "us-east-1"})
    b = Stack(root / "b", config=host_config(postgres, s3), env=s3.environment)
    # Both at once, against one new database: one creates the schema, the other must cope.
    a.start(wait=False)
    b.start(wait=False)
    a.wait_ready(timeout=300)
    b.wait_ready(timeout=300)
    yield a, b
    for stack in (a, b):
        assert stack.stop() == 0


SMALL_ARTIFACT = """
import json, os, sys, tempfile
import mlflow
from mlflow import MlflowClient

mode, experiment = sys.argv[1], sys.argv[2]
client = MlflowClient()
if mode == "log":
    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        mlflow.log_metric("loss", 0.25)
        path = os.path.join(tempfile.mkdtemp(), "notes.txt")
        open(path, "w").write("logged through host A\\n")
        mlflow.log_artifact(path)
    print(json.dumps({"run_id": run.info.run_id}))
else:
    run_id = sys.argv[3]
    downloaded = client.download_artifacts(run_id, "notes.txt", tempfile.mkdtemp())
    print(json.dumps({"text": open(downloaded).read(), "loss": client.get_run(run_id).data.metrics["loss"]}))
"""


def test_both_hosts_started_together_on_one_new_database(hosts):
    """One created the schema, the other waited for the store lock or retried: both serve."""
    for stack in hosts:
        status = stack.status()
        assert status["overall"] == "ready", status["summary"]


def test_a_run_logged_through_host_a_is_read_and_downloaded_through_host_b(hosts, stores):
    a, b = hosts
    _, s3 = stores
    experiment = f"hosts-{uuid.uuid4().hex[:8]}"
    run_id = run_client(SMALL_ARTIFACT, a.base, a.token, "log", experiment, timeout=180)["run_id"]
    seen = run_client(SMALL_ARTIFACT, b.base, b.token, "read", experiment, run_id, timeout=180)
    assert seen == {"text": "logged through host A\n", "loss": 0.25}
    stored = s3.keys("mlflow/")
    assert any(key.endswith(f"/{run_id}/artifacts/notes.txt") for key in stored), sorted(stored)[:20]
    assert not list(a.state_dir.glob("artifacts/**/notes.txt")), "the artifact must live in S3, not on host A's disk"


def test_200_mb_artifact_round_trips_through_the_route_with_s3_behind(hosts, stores, tmp_path):
    a, _ = hosts
    _, s3 = stores
    size = 200 << 20
    seen = run_client(BIG_ARTIFACT, a.base, a.token, str(size), timeout=900, cwd=tmp_path)
    assert seen["received"] == seen["sent"]
    stored = s3.keys("mlflow/")
    assert stored[next(key for key in stored if key.endswith(f"/{seen['run_id']}/artifacts/big.bin"))] == size


# MLflow's proxied multipart upload: the server creates the upload in S3 and hands out presigned
# part URLs, the client puts the parts straight into the store and asks the server to complete.
MULTIPART = (
    "import os\n"
    "os.environ.update(MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD='true', "
    "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE=str(5 << 20), MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE=str(5 << 20))\n"
) + BIG_ARTIFACT


def test_multipart_upload_through_the_proxy(hosts, stores, tmp_path):
    a, _ = hosts
    _, s3 = stores
    size = 24 << 20  # five parts of 5 MB (S3's minimum part size)
    seen = run_client(MULTIPART, a.base, a.token, str(size), timeout=600, cwd=tmp_path)
    assert seen["received"] == seen["sent"]
    stored = s3.keys("mlflow/")
    assert stored[next(key for key in stored if key.endswith(f"/{seen['run_id']}/artifacts/big.bin"))] == size
    log = "\n".join(path.read_text(errors="replace") for path in (a.state_dir / "logs").glob("mlflow*.log"))
    assert "/mlflow-artifacts/mpu/create/" in log and "/mlflow-artifacts/mpu/complete/" in log, "the multipart path was not taken"


def test_no_secret_reaches_argv_logs_or_status(hosts, stores):
    a, b = hosts
    _, s3 = stores
    secret = s3.environment["AWS_SECRET_ACCESS_KEY"]

    assert not [command for command in cmdlines().values() if secret in command]
    for stack in hosts:
        assert secret not in stack.mlproxy("status", "--json").stdout
        assert secret not in stack.mlproxy("config", "show").stdout
        for path in [stack.output, *(stack.state_dir / "logs").glob("*.log"), *(stack.state_dir / "run").rglob("*.json")]:
            assert secret not in path.read_text(errors="replace"), path


def _pids(stack: Stack) -> dict[str, int]:
    return {name: info.pid for name, info in stack.supervisor.processes().items()}


def _mlflow_problem(status: dict) -> str:
    error = status["services"]["mlflow"].get("last_error") or {}
    return error.get("message", "")


def test_object_store_gone_shows_degraded_with_the_cause_and_recovers_alone(hosts, stores):
    a, _ = hosts
    _, s3 = stores
    before = _pids(a)
    stored = s3.keys("mlflow/")
    s3.stop()
    try:
        down = a.wait_for(lambda s: s["overall"] == "degraded" and s["services"]["mlflow"]["phase"] == "unready", timeout=120, what="degraded")
        assert "/api/2.0/mlflow-artifacts/artifacts" in _mlflow_problem(down), _mlflow_problem(down)
        result = a.mlproxy("status")
        assert result.returncode == 1 and "mlflow-artifacts" in result.stdout
    finally:
        s3.start()  # the gateway comes back; the cluster kept the objects
    a.wait_ready(timeout=180)
    assert _pids(a) == before, "nothing healthy may be restarted because the object store was away"
    assert s3.keys("mlflow/") == stored, "the objects stored before the outage must all be there after it"


class MetricWriter(threading.Thread):
    """Logs one metric value after another through the route; remembers what was acknowledged."""

    def __init__(self, stack: Stack, run_id: str, key: str):
        super().__init__(daemon=True)
        self.stack, self.run_id, self.key = stack, run_id, key
        self.acknowledged: list[int] = []
        self.refused = 0
        self.stop = threading.Event()

    def run(self):
        session = self.stack.session()
        step = 0
        while not self.stop.is_set() and step < 100_000:
            step += 1
            body = {"run_id": self.run_id, "key": self.key, "value": step, "timestamp": int(time.time() * 1000), "step": step}
            try:
                answer = session.post(self.stack.url("mlflow/api/2.0/mlflow/runs/log-metric"), json=body, timeout=30)
            except OSError:
                answer = None
            if answer is not None and answer.status_code == 200:
                self.acknowledged.append(step)
            else:
                self.refused += 1
                time.sleep(0.2)


def test_postgresql_restarted_mid_load_degrades_then_recovers_without_losing_acknowledged_writes(hosts, stores):
    a, b = hosts
    postgres, _ = stores
    session = a.session()
    experiment = session.post(a.url("mlflow/api/2.0/mlflow/experiments/create"), json={"name": f"pg-restart-{uuid.uuid4().hex[:8]}"}, timeout=30).json()["experiment_id"]
    run_id = session.post(a.url("mlflow/api/2.0/mlflow/runs/create"), json={"experiment_id": experiment}, timeout=30).json()["run"]["info"]["run_id"]
    before = {stack.state_dir.name: _pids(stack) for stack in hosts}
    writers = [MetricWriter(a, run_id, "through-a"), MetricWriter(b, run_id, "through-b")]
    for writer in writers:
        writer.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(len(w.acknowledged) >= 5 for w in writers):
            time.sleep(0.2)
        assert all(w.acknowledged for w in writers), "no write went through before the restart"
        postgres.stop_server()
        try:
            down = a.wait_for(lambda s: s["overall"] == "degraded", timeout=120, what="degraded while PostgreSQL is down")
            assert "experiments/search" in _mlflow_problem(down) or "route" in down["summary"], down["summary"]
        finally:
            postgres.start()
        for stack in hosts:
            stack.wait_ready(timeout=180)
        acknowledged_before = [len(w.acknowledged) for w in writers]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(len(w.acknowledged) > n for w, n in zip(writers, acknowledged_before, strict=True)):
            time.sleep(0.2)
    finally:
        for writer in writers:
            writer.stop.set()
        for writer in writers:
            writer.join(60)
    for writer in writers:
        history = session.get(a.url("mlflow/api/2.0/mlflow/metrics/get-history"), params={"run_id": run_id, "metric_key": writer.key, "max_results": 100000}, timeout=60).json()
        stored = {int(m["step"]) for m in history.get("metrics", [])}
        lost = sorted(set(writer.acknowledged) - stored)
        assert not lost, f"{len(lost)} acknowledged writes through {writer.key} are missing: {lost[:20]}"
        assert len(writer.acknowledged) > acknowledged_before[writers.index(writer)], "writes did not resume after the restart"
    assert {stack.state_dir.name: _pids(stack) for stack in hosts} == before, "healthy processes were restarted"


def test_killing_host_a_mlflow_leaves_host_b_serving(hosts):
    a, b = hosts
    killed = a.pid("mlflow")
    os.kill(killed, 9)
    experiment = f"b-alone-{uuid.uuid4().hex[:8]}"
    created = b.session().post(b.url("mlflow/api/2.0/mlflow/experiments/create"), json={"name": experiment}, timeout=30)
    assert created.status_code == 200, created.text
    assert b.status()["overall"] == "ready"
    # A's agent and supervisord bring it back. Wait for a ready status about the new process: one
    # written before the agent noticed the kill still says ready (a CI run read it and got 503).
    a.wait_for(lambda s: s["overall"] == "ready" and s["services"]["mlflow"]["pid"] not in (0, killed), timeout=180, what="host A ready on a new MLflow")
    found = a.session().get(a.url("mlflow/api/2.0/mlflow/experiments/get-by-name"), params={"experiment_name": experiment}, timeout=30)
    assert found.status_code == 200 and found.json()["experiment"]["name"] == experiment
