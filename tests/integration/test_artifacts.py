"""Artifacts of any size through Jupyter's port: streamed both ways, Jupyter's memory bounded,
aborted transfers leaving nothing behind, and MLflow's absence or silence reported clearly."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import textwrap
import time
import uuid

import pytest
import requests

from tests.stack import Stack
from tests.support import procfs
from tests.support.mlflow_client import run_client

pytestmark = pytest.mark.integration

MB = 1 << 20
GROWTH_LIMIT = 64 * MB  # the bound on the Jupyter server's peak RSS growth


def random_file(path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        for _ in range(size // MB):
            block = os.urandom(MB)
            digest.update(block)
            handle.write(block)
    return digest.hexdigest()


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def mlflow_connections(stack) -> int:
    """Connections open to MLflow's unix socket (Jupyter's, and for an instant the agent's probes)."""
    return procfs.unix_connections(stack.mlflow_socket)


def artifact_names(stack, run_path: str) -> list[str]:
    listed = stack.session().get(stack.url("mlflow/api/2.0/mlflow-artifacts/artifacts"), params={"path": run_path}, timeout=30)
    assert listed.status_code == 200, listed.text
    return [entry["path"] for entry in listed.json().get("files", [])]


def raw_request(stack, method: str, path: str, headers: dict[str, str]) -> socket.socket:
    """A client that sends headers only; the caller sends (part of) the body and hangs up."""
    connection = socket.create_connection(("127.0.0.1", stack.jupyter_port))
    lines = [f"{method} /{path} HTTP/1.1", f"Host: 127.0.0.1:{stack.jupyter_port}", *(f"{k}: {v}" for k, v in headers.items())]
    connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return connection


ROUND_TRIP = textwrap.dedent(
    """
    import hashlib, json, os, sys, tempfile
    import mlflow
    from mlflow import MlflowClient

    path, step = sys.argv[1], sys.argv[2]
    if step == "upload":
        mlflow.set_experiment(sys.argv[3])
        with mlflow.start_run() as run:
            mlflow.log_artifact(path)
        print(json.dumps({"run_id": run.info.run_id}))
    else:
        target = MlflowClient().download_artifacts(sys.argv[3], os.path.basename(path), tempfile.mkdtemp(dir=os.path.dirname(path)))
        digest = hashlib.sha256()
        with open(target, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        os.unlink(target)
        print(json.dumps({"sha256": digest.hexdigest()}))
    """
)


def test_one_gigabyte_artifact_round_trip_with_bounded_jupyter_memory(shared_stack, tmp_path):
    jupyter = shared_stack.pid("jupyter")
    path = tmp_path / "model.bin"
    checksum = random_file(path, 1024 * MB)
    try:
        before = procfs.peak_rss(jupyter)
        run = run_client(ROUND_TRIP, shared_stack.base, shared_stack.token, str(path), "upload", f"big-{uuid.uuid4().hex[:6]}", timeout=900)
        after_upload = procfs.peak_rss(jupyter)
        fetched = run_client(ROUND_TRIP, shared_stack.base, shared_stack.token, str(path), "download", run["run_id"], timeout=900)
        after_download = procfs.peak_rss(jupyter)
    finally:
        path.unlink()
    assert fetched["sha256"] == checksum
    stored = list((shared_stack.state_dir / "artifacts").rglob("model.bin"))
    assert [p.stat().st_size for p in stored if run["run_id"] in str(p)] == [1024 * MB]
    assert after_upload - before <= GROWTH_LIMIT, f"Jupyter's peak RSS grew by {(after_upload - before) / MB:.0f} MB during the upload"
    assert after_download - after_upload <= GROWTH_LIMIT, f"... by {(after_download - after_upload) / MB:.0f} MB during the download"


def no_connections_left(stack) -> None:
    """Wait for Jupyter's idle keep-alive connections from earlier requests to close (it closes
    them itself after seconds), so the next count is this test's own."""
    wait_until(lambda: mlflow_connections(stack) == 0, 60, "earlier idle connections to MLflow to close")


def test_small_calls_reuse_a_kept_alive_connection_to_mlflow(shared_stack):
    """Jupyter keeps its connection to MLflow between calls instead of opening one per call."""
    session = shared_stack.session()
    url = shared_stack.url("mlflow/api/2.0/mlflow/experiments/search")
    held = None  # the connections open after every call so far
    for _ in range(20):
        answer = session.get(url, params={"max_results": 1}, timeout=30)
        assert answer.status_code == 200, answer.text
        open_now = procfs.unix_connection_inodes(shared_stack.mlflow_socket)
        held = open_now if held is None else held & open_now
    assert held, "no connection to MLflow outlived a call: each call opened its own"


def test_upload_aborted_halfway_leaves_nothing(shared_stack):
    jupyter = shared_stack.pid("jupyter")
    no_connections_left(shared_stack)
    run_path = f"0/aborted-{uuid.uuid4().hex[:8]}"
    before = procfs.peak_rss(jupyter)
    client = raw_request(
        shared_stack, "PUT", f"mlflow/api/2.0/mlflow-artifacts/artifacts/{run_path}/half.bin",
        {"Authorization": f"token {shared_stack.token}", "Content-Length": str(512 * MB)},
    )
    for _ in range(256):
        client.sendall(os.urandom(MB))
    # The transfer is in flight: Jupyter holds one connection to MLflow for it.
    wait_until(lambda: mlflow_connections(shared_stack) >= 1, 60, "the upload's connection to MLflow")
    client.close()
    wait_until(lambda: mlflow_connections(shared_stack) == 0, 60, "Jupyter to drop its connection to MLflow")
    assert artifact_names(shared_stack, run_path) == []
    stored = shared_stack.state_dir / "artifacts" / run_path
    assert not [path for path in stored.rglob("*") if path.is_file()], "a partial upload was left in the artifact store"
    assert procfs.peak_rss(jupyter) - before <= GROWTH_LIMIT


def test_download_aborted_halfway_frees_the_connection(shared_stack, tmp_path):
    jupyter = shared_stack.pid("jupyter")
    run_path = f"0/download-{uuid.uuid4().hex[:8]}"
    session = shared_stack.session()
    url = shared_stack.url(f"mlflow/api/2.0/mlflow-artifacts/artifacts/{run_path}/blob.bin")
    path = tmp_path / "blob.bin"
    random_file(path, 300 * MB)
    with open(path, "rb") as handle:
        assert session.put(url, data=handle, timeout=600).status_code == 200
    path.unlink()
    before = procfs.peak_rss(jupyter)
    no_connections_left(shared_stack)
    response = session.get(url, stream=True, timeout=60)
    assert response.status_code == 200 and int(response.headers["Content-Length"]) == 300 * MB
    chunks = response.iter_content(MB)
    for _ in range(50):
        next(chunks)
    # A stalled reader: back-pressure must keep Jupyter from buffering the rest.
    time.sleep(2)
    assert procfs.peak_rss(jupyter) - before <= GROWTH_LIMIT
    response.close()
    wait_until(lambda: mlflow_connections(shared_stack) == 0, 60, "Jupyter to drop its connection to MLflow")
    assert procfs.peak_rss(jupyter) - before <= GROWTH_LIMIT


def test_unauthenticated_upload_is_refused_without_being_read(shared_stack):
    jupyter = shared_stack.pid("jupyter")
    run_path = f"0/anonymous-{uuid.uuid4().hex[:8]}"
    before = procfs.peak_rss(jupyter)
    url = shared_stack.url(f"mlflow/api/2.0/mlflow-artifacts/artifacts/{run_path}/big.bin")
    sent = 0

    def body():
        nonlocal sent
        for _ in range(400):
            sent += MB
            yield os.urandom(MB)

    try:
        answer = requests.put(url, data=body(), headers={"Content-Length": str(400 * MB)}, timeout=120)
        assert answer.status_code == 401
    except requests.ConnectionError:
        pass  # Jupyter answered and closed while the client was still sending: also a refusal
    assert sent < 400 * MB, "the whole body was read before the refusal"
    assert artifact_names(shared_stack, run_path) == []
    assert procfs.peak_rss(jupyter) - before <= GROWTH_LIMIT


def test_browser_refusal_before_the_body_says_connection_close(shared_stack):
    # Jupyter's own 403 (a browser's write, no login), answered before the 2 MB body is read:
    # tornado then hangs up, so the answer must say so or a client reusing the connection is reset.
    # (An MLflow API path, or an API client, would get our 401 instead: see test_route.py.)
    client = raw_request(shared_stack, "POST", "mlflow/graphql", {"Accept": "text/html", "Content-Type": "text/plain", "Content-Length": str(2 * MB)})
    client.settimeout(60)
    answer = b""
    try:
        while b"\r\n\r\n" not in answer and (chunk := client.recv(65536)):
            answer += chunk
    finally:
        client.close()
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 403 " in status_line, answer[:300]
    assert b"connection: close" in rest.lower().split(b"\r\n\r\n")[0], answer[:500]


def test_body_over_the_limit_names_the_setting(shared_stack):
    client = raw_request(
        shared_stack, "PUT", "mlflow/api/2.0/mlflow-artifacts/artifacts/0/too-big/x.bin",
        {"Authorization": f"token {shared_stack.token}", "Content-Length": str(2 << 40)},  # 2 TiB, over the 1 TiB default
    )
    client.settimeout(60)
    answer = b""
    while chunk := client.recv(65536):  # Jupyter answers without reading the body, and hangs up
        answer += chunk
    client.close()
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"jupyter.max_upload_size" in answer and b"MLPROXY_JUPYTER__MAX_UPLOAD_SIZE" in answer


# --- a stack of its own: small limits, MLflow stopped and stalled -----------------------------
FAULTS_CONFIG = """
[jupyter]
max_upload_size = 10485760
mlflow_timeout = 10

[agent.liveness]
period = 2
timeout = 2
failure_threshold = 100  # the agent must not replace the MLflow this module stops on purpose
"""


@pytest.fixture(scope="module")
def faults_stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("artifact-faults") / "state", config=FAULTS_CONFIG).start()
    yield stack
    stack.stop()


def test_chunked_body_over_the_limit_gets_413(faults_stack):
    def body():
        for _ in range(20):
            yield os.urandom(MB)

    try:
        answer = faults_stack.session().put(faults_stack.url("mlflow/api/2.0/mlflow-artifacts/artifacts/0/chunked/x.bin"), data=body(), timeout=60)
        assert answer.status_code == 413 and "jupyter.max_upload_size" in answer.json()["message"]
    except requests.ConnectionError:
        pytest.fail("the over-limit chunked upload got no answer")
    assert artifact_names(faults_stack, "0/chunked") == []
    small = faults_stack.session().put(faults_stack.url("mlflow/api/2.0/mlflow-artifacts/artifacts/0/chunked/ok.bin"), data=iter([b"a" * MB] * 3), timeout=60)
    assert small.status_code == 200 and artifact_names(faults_stack, "0/chunked") == ["ok.bin"]


def test_stalled_mlflow_gets_504(faults_stack):
    mlflow = faults_stack.pid("mlflow")
    os.kill(mlflow, signal.SIGSTOP)
    try:
        answer = faults_stack.session().get(faults_stack.url("mlflow/api/2.0/mlflow/experiments/search"), params={"max_results": 1}, timeout=120)
    finally:
        os.kill(mlflow, signal.SIGCONT)
    assert answer.status_code == 504
    assert answer.json()["error_code"] == "DEADLINE_EXCEEDED" and "10 s" in answer.json()["message"]
    wait_until(lambda: mlflow_connections(faults_stack) == 0, 60, "the stalled connection to close")


def test_mlflow_stalled_mid_upload_gets_504_and_stores_nothing(faults_stack):
    """MLflow stops reading a body half sent: the client gets a 504 once the timeout has passed,
    and no half file. (tornado drops the write it was waiting on when the connection closes; the
    relay used to wait on it forever, and the client with it.)"""
    mlflow = faults_stack.pid("mlflow")
    os.kill(mlflow, signal.SIGSTOP)
    try:
        answer = faults_stack.session().put(faults_stack.url("mlflow/api/2.0/mlflow-artifacts/artifacts/0/stalled/x.bin"), data=b"x" * (8 * MB), timeout=120)
    finally:
        os.kill(mlflow, signal.SIGCONT)
    assert answer.status_code == 504
    assert answer.json()["error_code"] == "DEADLINE_EXCEEDED" and "10 s" in answer.json()["message"]
    wait_until(lambda: mlflow_connections(faults_stack) == 0, 60, "the stalled connection to close")
    assert artifact_names(faults_stack, "0/stalled") == []


def test_stopped_mlflow_gets_a_reloading_page_and_503_then_recovers(faults_stack):
    assert faults_stack.mlproxy("ctl", "stop", "mlflow").returncode == 0
    try:
        session = faults_stack.session()
        page = session.get(faults_stack.url("mlflow/"), headers={"Accept": "text/html,application/xhtml+xml"}, timeout=30)
        assert page.status_code == 503 and page.headers["Retry-After"].isdigit()
        assert page.headers["Content-Type"].startswith("text/html") and '<meta http-equiv="refresh"' in page.text
        api = session.get(faults_stack.url("mlflow/api/2.0/mlflow/experiments/search"), params={"max_results": 1}, timeout=30)
        assert api.status_code == 503 and api.headers["Retry-After"].isdigit()
        assert api.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        upload = session.put(faults_stack.url(f"proxy/{faults_stack.mlflow_port}/api/2.0/mlflow-artifacts/artifacts/0/down/x.bin"), data=b"x" * 1000, timeout=30)
        assert upload.status_code == 503
    finally:
        assert faults_stack.mlproxy("ctl", "start", "mlflow", timeout=180).returncode == 0
    # What the page's reload does: the same URL, until MLflow answers it.
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        page = session.get(faults_stack.url("mlflow/"), headers={"Accept": "text/html"}, timeout=30)
        if page.status_code == 200:
            break
        assert page.status_code == 503
        time.sleep(1)
    assert page.status_code == 200 and "<title>MLflow</title>" in page.text
