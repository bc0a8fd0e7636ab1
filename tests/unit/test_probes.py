"""The prober against a real HTTP server on loopback: what wakes the agent's loop."""

from __future__ import annotations

import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlproxy_supervisor.agent.probes import Prober
from mlproxy_supervisor.agent.reconcile import ProbeRequest
from mlproxy_supervisor.config import Settings


@pytest.fixture(params=["socket", "tcp"])
def mlflow_stand_in(request, tmp_path):
    """Answers /health after 0.1 s with the status the test sets, on a unix socket where the
    stack's MLflow listens by default (runtime_dir/mlflow.sock), or on a loopback port."""
    answer = {"status": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(0.1)
            body = b"OK"
            self.send_response(answer["status"])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    if request.param == "socket":
        settings = Settings(state_dir=tmp_path)
        settings.runtime_dir.mkdir(mode=0o700)
        server = ThreadingUnixHTTPServer(str(settings.mlflow_socket), Handler)
    else:
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        settings = Settings(state_dir=tmp_path, mlflow={"listen": "tcp", "port": server.server_address[1]})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield settings, answer
    server.shutdown()
    server.server_close()


class ThreadingUnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


def _sleep_with_one_probe(settings: Settings, wake_on_success: bool) -> tuple[float, bool]:
    prober = Prober(settings, lambda: "token")
    prober.submit([ProbeRequest("mlflow", "liveness", 2.0, 1)])
    started = time.monotonic()
    prober.wait(1.5, wake_on_success=wake_on_success)
    slept = time.monotonic() - started
    results = prober.collect()
    assert len(results) == 1
    return slept, results[0].ok


def test_a_settled_agent_sleeps_through_a_successful_probe(tmp_path, mlflow_stand_in):
    settings, _ = mlflow_stand_in
    slept, ok = _sleep_with_one_probe(settings, wake_on_success=False)
    assert ok and slept >= 1.4


def test_a_failed_probe_wakes_a_settled_agent_at_once(tmp_path, mlflow_stand_in):
    settings, answer = mlflow_stand_in
    answer["status"] = 503
    slept, ok = _sleep_with_one_probe(settings, wake_on_success=False)
    assert not ok and slept < 1.0


def test_a_starting_agent_wakes_for_every_answer(tmp_path, mlflow_stand_in):
    settings, _ = mlflow_stand_in
    slept, ok = _sleep_with_one_probe(settings, wake_on_success=True)
    assert ok and slept < 1.0
