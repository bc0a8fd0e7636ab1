"""Idle keep-alive connections to MLflow, kept for the next request through the route.

A new connection per request (as tornado's HTTP client, and so jupyter-server-proxy, makes) costs
Jupyter a resolver call in a thread and a connect, and MLflow a new uvicorn connection; for a small
REST call that is a good part of what the route adds (docs/benchmarks.md). So a relay whose request
and response both completed on a connection MLflow keeps open hands the connection back here.

Reuse must never send a request on a connection MLflow is closing. uvicorn closes a keep-alive
connection after 5 s idle (its timeout_keep_alive default; `mlflow server` keeps it), so one idle
here for IDLE_LIMIT seconds is closed first, by us; one MLflow closed anyway (a restart) is readable
(its end of file) and is dropped before use. What is left is MLflow closing a connection in the
instant we reuse it, for a reason of its own: that request fails as one in flight when MLflow
restarts does (502, Retry-After).

Connections are kept per key: MLflow's address, and in team mode also the user, so that even a
desynchronised connection (which framing should make impossible, see stream.py) cannot carry one
user's bytes into another's request.
"""

from __future__ import annotations

import asyncio
import select
import time

from tornado import iostream

IDLE_LIMIT = 2.0  # seconds; well under uvicorn's 5 s keep-alive timeout
MAX_IDLE = 16  # connections per address; more concurrent requests than this open new ones


def readable(stream: iostream.IOStream) -> bool:
    """Whether the peer sent something we have not read from the socket yet: bytes, or its end."""
    ready = select.poll()
    ready.register(stream.fileno(), select.POLLIN)
    return bool(ready.poll(0))


def _holds_unread(stream: iostream.IOStream) -> bool:
    """Whether an idle connection has something to read: MLflow's end of file or a stray byte in
    the socket, or bytes tornado already read past the last response (its buffer; tornado has no
    public way to ask, and tests/unit/test_pool.py pins this)."""
    return bool(getattr(stream, "_read_buffer_size", 0)) or readable(stream)


class IdleConnections:
    """Per key (any hashable: MLflow's socket path or host and port, and the user in team mode),
    its idle streams."""

    def __init__(self, idle_limit: float = IDLE_LIMIT, max_idle: int = MAX_IDLE):
        self.idle_limit = idle_limit
        self.max_idle = max_idle
        self._idle: dict[object, list[tuple[float, iostream.IOStream]]] = {}
        self._sweep: asyncio.TimerHandle | None = None

    def take(self, key) -> iostream.IOStream | None:
        """The most recently used idle connection kept under `key` still fit for a request, or None."""
        idle = self._idle.get(key, [])
        while idle:
            since, stream = idle.pop()
            if not stream.closed() and time.monotonic() - since < self.idle_limit and not _holds_unread(stream):
                return stream
            stream.close()
        return None

    def give_back(self, key, stream: iostream.IOStream) -> None:
        idle = self._idle.setdefault(key, [])
        if stream.closed() or len(idle) >= self.max_idle or _holds_unread(stream):
            stream.close()
            return
        idle.append((time.monotonic(), stream))
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self.idle_limit, self._close_expired)

    def count(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    def _close_expired(self) -> None:
        """Close what has idled past the limit (no request would take it), so MLflow never has to."""
        self._sweep = None
        now = time.monotonic()
        for key, idle in self._idle.items():
            keep = [(since, stream) for since, stream in idle if now - since < self.idle_limit and not stream.closed()]
            for since, stream in idle:
                if (since, stream) not in keep:
                    stream.close()
            self._idle[key] = keep
        if self.count():
            self._sweep = asyncio.get_running_loop().call_later(self.idle_limit, self._close_expired)
