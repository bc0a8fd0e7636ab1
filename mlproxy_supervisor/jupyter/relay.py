"""One proxied request to MLflow over HTTP/1.1, streamed both ways through a bounded buffer.

The relay speaks HTTP to MLflow with tornado's own HTTP/1.1 connection class, not its HTTP client:
the client buffers whole responses unless given a streaming callback, ignores that callback's
return value (so a slow browser would make Jupyter buffer a whole download), and only knows a
total request timeout (a 3 GB upload would hit it). Here every chunk is awaited:

- upload: the handler's data_received() returns `send(chunk)`, the future of the write to MLflow's
  socket; tornado reads the next chunk from the client only once it is done;
- download: `data_received()` below writes the chunk to the client and returns the flush's future;
  tornado reads the next chunk from MLflow only once it is done.

So Jupyter holds about one chunk per direction, whatever the size. Time spent waiting for MLflow
(and only for MLflow: a slow client is back-pressure, not a fault) is bounded by `timeout`.

MLflow's answer is read from the moment the request's headers are sent, not once its body is: MLflow
may answer before it has read the whole body (a 507 when its disk fills mid-upload) and hang up.
That answer is what the client gets, once its upload is in; the rest of the body goes nowhere.

A connection whose request and response both went through whole, and that MLflow keeps open,
goes back to an `IdleConnections` (connections.py) for the next request; any other is closed.
"""

from __future__ import annotations

import asyncio
import select
import sys
import time
from urllib.parse import urlsplit

from tornado import httputil, iostream
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters

from .connections import IdleConnections

CHUNK = 1024 * 1024  # bytes at most per data_received() from MLflow
# Bytes per socket read, both ways (tornado's default is 64 KiB): in a hand A/B of 100 MB
# transfers, about a fifth less Jupyter CPU per MB; 1 MiB reads cost more (each zeroes its buffer).
READ_SIZE = 256 * 1024
FLUSH_AFTER = 64 * 1024  # smaller responses go out in one write, with tornado's Etag as before
# Response headers that describe this hop, not the payload (tornado sets its own).
HOP_HEADERS = frozenset({"Connection", "Keep-Alive", "Transfer-Encoding", "Proxy-Connection", "Trailer", "Upgrade"})
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class MLflowUnreachable(Exception):
    """MLflow refused the connection: stopped, restarting, or not listening yet."""


class MLflowTimeout(Exception):
    """MLflow stayed silent for longer than the timeout."""


class MLflowFailed(Exception):
    """MLflow closed the connection before the response was complete."""


class Relay(httputil.HTTPMessageDelegate):
    """Relays one request: `open()`, then `send()` per body chunk, then `respond()`.

    `handler` is the tornado RequestHandler the client talks to; `flush()` its flush that returns
    a future; `rewrite_location(value)` maps a redirect's Location into the route's prefix.
    """

    def __init__(self, handler, timeout: float, flush, rewrite_location=lambda location: location):
        self.handler = handler
        self.timeout = timeout
        self.rewrite_location = rewrite_location
        self.flush = flush  # the handler's real flush, which returns its future
        self.connection: HTTP1Connection | None = None
        self.opened: asyncio.Future = asyncio.get_running_loop().create_future()
        self.body_done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.response_started = False
        self.timed_out = False
        self.closed = False
        self.complete = False  # MLflow's whole response was relayed
        self.upload_cut = False  # MLflow answered or hung up before the whole body was sent
        self._request_sent = False  # the whole request went to MLflow
        self._answer: asyncio.Future | None = None  # reading MLflow's response
        self._sending: asyncio.Future | None = None  # the body chunk being written to MLflow
        self._waiting_since: float | None = None  # when we began waiting on MLflow, if we are
        self._unflushed = 0
        self.flush_each_chunk = False  # set from the response headers (text/event-stream)
        self._keep_alive = False  # MLflow's response leaves the connection open for another
        self._idle_connections: IdleConnections | None = None
        self._address = None  # MLflow's, as the idle connections know it
        self._watchdog: asyncio.TimerHandle | None = None

    # --- the request --------------------------------------------------------------------
    async def open(self, tcp_client, request, idle_connections: IdleConnections | None = None, address=None) -> None:
        """Connect to MLflow (or take an idle connection to `address`) and send the request's
        headers; its body follows with send()."""
        url = urlsplit(request.url)
        self._wait_on_mlflow()
        self._arm_watchdog()
        self._idle_connections, self._address = idle_connections, address
        stream = idle_connections.take(address) if idle_connections is not None else None
        if stream is None:
            stream = await self._connect(tcp_client, url)
        stream.set_nodelay(True)
        stream.read_chunk_size = READ_SIZE
        if self.closed:  # the client left while we connected
            stream.close()
            raise MLflowFailed("client disconnected")
        self.connection = HTTP1Connection(stream, is_client=True, params=HTTP1ConnectionParameters(chunk_size=CHUNK, max_body_size=sys.maxsize))
        headers = httputil.HTTPHeaders(request.headers)
        headers.pop("Expect", None)  # Jupyter answered 100-continue itself, after authenticating
        target = url.path + (f"?{url.query}" if url.query else "")
        await self._mlflow(self.connection.write_headers(httputil.RequestStartLine(request.method, target, "HTTP/1.1"), headers))
        self._idle()
        self._answer = asyncio.ensure_future(self._read_answer())
        self._answer.add_done_callback(lambda task: task.cancelled() or task.exception())  # awaited in respond()
        if not self.opened.done():
            self.opened.set_result(None)

    async def _connect(self, tcp_client, url) -> iostream.IOStream:
        try:
            return await tcp_client.connect(url.hostname, url.port, timeout=self.timeout)
        except iostream.StreamClosedError as error:
            raise MLflowUnreachable(str(error.real_error or error)) from None
        except TimeoutError:
            raise MLflowTimeout(f"no connection within {self.timeout:g} s") from None
        except OSError as error:
            raise MLflowUnreachable(str(error)) from None

    async def send(self, chunk: bytes) -> None:
        """One chunk of the request body, forwarded before the next is read from the client."""
        if self.connection is None or self.closed or self._answered_early():
            return  # refused, aborted, or answered already: the rest of the body goes nowhere
        try:
            self._sending = self.connection.write(chunk)
            await self._mlflow(self._sending)
        except iostream.StreamClosedError:
            # MLflow hung up. If it answered first, _read_answer() has that answer in tornado's
            # buffer and relays it; if not, reading fails and aborts.
            self.upload_cut = True
        self._idle()

    def _answered_early(self) -> bool:
        """MLflow sent something (its answer, or its end) before the whole body was sent.

        Looked at before each write: tornado would read it only after the write, and a write to a
        socket MLflow has closed makes tornado close its own end, dropping an answer not yet read.
        """
        if not self.upload_cut:
            stream = self.connection.stream
            if self.response_started or stream is None or stream.closed():
                self.upload_cut = True
            else:
                ready = select.poll()
                ready.register(stream.fileno(), select.POLLIN)
                self.upload_cut = bool(ready.poll(0))
        return self.upload_cut

    def end_body(self) -> None:
        if not self.body_done.done():
            self.body_done.set_result(None)

    async def respond(self) -> None:
        """Finish the request once its body is in, and relay MLflow's response to the client."""
        await self.body_done
        if self.closed:
            raise self.failure()
        try:
            if not self.upload_cut:
                self.connection.finish()
                self._request_sent = True
            if not self.complete:
                self._wait_on_mlflow()
            await self._answer
        except httputil.HTTPOutputError:
            self.abort()
        finally:
            self._stop_watchdog()
        if self.closed and not self.complete:
            raise self.failure()
        self._release()

    def _release(self) -> None:
        """The exchange is over: the connection goes back for the next request if both sides
        went through whole and MLflow keeps it open; otherwise it is closed."""
        if self.complete and self._request_sent and self._keep_alive and not self.closed and self._idle_connections is not None:
            self._idle_connections.give_back(self._address, self.connection.detach())
        else:
            self._hang_up()

    async def _read_answer(self) -> None:
        try:
            await self.connection.read_response(self)
        except iostream.StreamClosedError:  # MLflow hung up before its answer's headers
            self.abort()

    def failure(self) -> Exception:
        if self.timed_out:
            return MLflowTimeout(f"MLflow sent nothing for {self.timeout:g} s")
        return MLflowFailed("MLflow closed the connection before answering")

    # --- the response (tornado calls these while reading MLflow's answer) ----------------
    def headers_received(self, start_line, headers):
        if start_line.code < 200:
            return  # 100 Continue and friends: tornado reads the real response next
        handler = self.handler
        handler.set_status(start_line.code, start_line.reason)
        handler._headers = httputil.HTTPHeaders()  # tornado's defaults are not MLflow's
        for name, value in headers.get_all():
            if name in HOP_HEADERS:
                continue
            if name == "Location" and start_line.code in REDIRECTS:
                value = self.rewrite_location(value)
            handler.add_header(name, value)
        self._keep_alive = start_line.version == "HTTP/1.1" and headers.get("Connection", "").lower() != "close"
        # A stream of events must reach the client as each one is sent, not batched. Like
        # jupyter-server-proxy, the client's Accept asks for it too (a server may not label it).
        self.flush_each_chunk = any(
            "text/event-stream" in value for value in (headers.get("Content-Type", ""), self.handler.request.headers.get("Accept", ""))
        )
        self.response_started = True
        self._wait_on_mlflow()

    async def data_received(self, chunk: bytes) -> None:
        self._idle()
        self.handler.write(chunk)
        self._unflushed += len(chunk)
        if self._unflushed >= FLUSH_AFTER or self.flush_each_chunk:
            self._unflushed = 0
            try:
                await self.flush()
            except iostream.StreamClosedError:
                self.abort()  # the client left: stop reading from MLflow
                return
        self._wait_on_mlflow()

    def finish(self) -> None:
        self.complete = True
        self._idle()
        if not self._request_sent:
            self._hang_up()  # answered early: MLflow gets no more of this request

    def on_connection_close(self) -> None:
        self.abort()

    # --- faults ---------------------------------------------------------------------------
    def abort(self) -> None:
        """Drop the connection to MLflow (the client left, or MLflow stalled)."""
        self.closed = True
        self._stop_watchdog()
        self._hang_up()
        if not self.opened.done():
            self.opened.set_exception(self.failure())
            self.opened.exception()  # retrieved: open()'s caller reports it
        self.end_body()

    def _hang_up(self) -> None:
        if self.connection is not None:
            self.connection.close()
        # tornado forgets the write it was waiting on when it closes the connection: end the wait.
        if self._sending is not None and not self._sending.done():
            self._sending.set_result(None)

    def _wait_on_mlflow(self) -> None:
        self._waiting_since = time.monotonic()

    def _idle(self) -> None:
        """Waiting on the client now (or on nothing): MLflow's clock stops."""
        self._waiting_since = None

    async def _mlflow(self, future):
        self._wait_on_mlflow()
        return await future

    def _arm_watchdog(self) -> None:
        self._watchdog = asyncio.get_running_loop().call_later(min(1.0, self.timeout / 4), self._check)

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _check(self) -> None:
        if self._waiting_since is not None and time.monotonic() - self._waiting_since > self.timeout:
            self.timed_out = True
            self.abort()
            return
        self._arm_watchdog()
