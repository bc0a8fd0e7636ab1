"""External checks, written independently of the agent's probes: what a user's client sees.

Each check is one GET on a fresh connection (as the agent and jupyter-server-proxy do), so
uvicorn's keep-alive penalty never skews a timing.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable
from pathlib import Path

from mlproxy_supervisor.local_http import connection as http_connection

EXPERIMENTS = "/api/2.0/mlflow/experiments/search?max_results=1"
POLL_INTERVAL = 0.05  # seconds between polls of anything measured


def get(port: int, path: str, token: str | None = None, timeout: float = 2.0, expect: bytes = b"", unix_socket: Path | None = None) -> bool:
    """One GET to 127.0.0.1:port, or over unix_socket when given (then the port only names the Host)."""
    headers = {"Connection": "close", "User-Agent": "mlproxy-benchmark"}
    if token:
        headers["Authorization"] = f"token {token}"
    connection = http_connection(f"http://127.0.0.1:{port}/", unix_socket, timeout)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read(4096)
    except (TimeoutError, OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()
    return response.status == 200 and body.startswith(expect)


def mlflow_ready(port: int, timeout: float = 2.0, unix_socket: Path | None = None) -> bool:
    """MLflow's readiness: a REST call that touches the backend store (as the agent's probe), on its
    own listener: mlproxy's unix socket (settings.mlflow_socket), or the port."""
    return get(port, EXPERIMENTS, timeout=timeout, expect=b"{", unix_socket=unix_socket)


def route_ok(jupyter_port: int, mlflow_port: int, token: str | None, timeout: float = 5.0) -> bool:
    """The route a user takes: /mlflow/health, an authenticated REST call, /proxy/<port>/health."""
    if not token:
        return False
    return (
        get(jupyter_port, "/mlflow/health", token, timeout, b"OK")
        and get(jupyter_port, f"/mlflow{EXPERIMENTS}", token, timeout, b"{")
        and get(jupyter_port, f"/proxy/{mlflow_port}/health", token, timeout, b"OK")
    )


def wait_until(check: Callable[[], bool], timeout: float, interval: float = POLL_INTERVAL) -> float | None:
    """Poll check every interval; the monotonic time its first success completed, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(interval)
    return None


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_ports_free(ports: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [port for port in ports if not port_is_free(port)]
        if not busy:
            return
        time.sleep(0.2)
    raise RuntimeError(f"ports {busy} still in use after {timeout:.0f} s; stop whatever holds them")
