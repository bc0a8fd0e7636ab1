"""HTTP to the stack's own servers (MLflow, Jupyter, supervisord), over TCP or a unix socket.

The agent's probes, `mlproxy doctor` and the XML-RPC client all speak to local servers that may
listen on a unix socket (MLflow's by default, supervisord's always): one connection class for
that, and one bounded request helper.
"""

from __future__ import annotations

import http.client
import os
import socket
from urllib.parse import urlsplit


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket; the request still names host:port in its Host header."""

    def __init__(self, path: str, host: str, port: int | None, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def connection(url: str, unix_socket: str | os.PathLike | None, timeout: float) -> http.client.HTTPConnection:
    """A connection for `url`, made over `unix_socket` when one is given (MLflow's own listener)."""
    parts = urlsplit(url)
    if unix_socket:
        return UnixHTTPConnection(str(unix_socket), parts.hostname, parts.port, timeout)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def fetch(url: str, timeout: float, unix_socket: str | os.PathLike | None = None, method: str = "GET",
          headers: dict | None = None, body: bytes | None = None, limit: int = 4096) -> tuple[int, bytes]:  # fmt: skip
    """One request on a fresh connection: (status, the first `limit` bytes of the body). Raises
    OSError (TimeoutError when nothing answered in time) or http.client.HTTPException."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    client = connection(url, unix_socket, timeout)
    try:
        client.request(method, target, body=body, headers=headers or {})
        response = client.getresponse()
        return response.status, response.read(limit)
    finally:
        client.close()
