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

Framing. The request's body reaches MLflow only with framing MLflow reads: the client's
Content-Length, or chunked (re-framed, for every method). tornado's client frames a body only for
POST, PUT and PATCH, and writes any other method's body bare after the headers, where MLflow reads
it as the next request on the connection (request smuggling). So the relay sets the framing itself
(`request_framing`, by tornado's own parsing rules), and a connection goes back to an
`IdleConnections` (pool.py) for the next request only when both messages ended exactly: the
request's framing was complete, and the response was read to its framed end on a connection MLflow
keeps open. Any other connection is closed.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from tornado import httputil, iostream
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters, is_transfer_encoding_chunked, parse_int

from .pool import IdleConnections, readable

CHUNK = 1024 * 1024  # bytes at most per data_received() from MLflow
# Bytes per socket read, both ways (tornado's default is 64 KiB): in a hand A/B of 100 MB
# transfers, about a fifth less Jupyter CPU per MB; 1 MiB reads cost more (each zeroes its buffer).
READ_SIZE = 256 * 1024
FLUSH_AFTER = 64 * 1024  # smaller responses go out in one write, with tornado's Etag as before
# Response headers that describe this hop, not the payload (tornado sets its own).
HOP_HEADERS = frozenset({"Connection", "Keep-Alive", "Transfer-Encoding", "Proxy-Connection", "Trailer", "Upgrade"})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
FRAMING_HEADERS = ("Content-Length", "Transfer-Encoding")


@dataclass(frozen=True)
class Framing:
    """How a request's body is delimited: a length, chunked, or no body at all."""

    length: int | None = None
    chunked: bool = False

    @property
    def has_body(self) -> bool:
        return self.chunked or self.length is not None


def request_framing(headers: httputil.HTTPHeaders) -> Framing:
    """The framing tornado reads the client's body with (HTTP1Connection._read_body): chunked, or
    Content-Length (equal duplicates allowed, digits only), or none. Raises HTTPInputError (or
    ValueError) for what tornado refuses with 400: both headers, a coding other than chunked, a
    length that is not a plain number. Parsing with tornado's rules means a request we relay is
    the request tornado reads, byte for byte."""
    if is_transfer_encoding_chunked(headers):  # raises for TE + CL and for other codings
        return Framing(chunked=True)
    if "Content-Length" not in headers:
        return Framing()
    pieces = re.split(r",[ \t]*", headers["Content-Length"])
    if any(piece != pieces[0] for piece in pieces):
        raise httputil.HTTPInputError(f"unequal Content-Lengths {headers['Content-Length']!r}")
    return Framing(length=parse_int(pieces[0]))


class MLflowUnreachable(Exception):
    """MLflow refused the connection: stopped, restarting, or not listening yet."""


class MLflowTimeout(Exception):
    """MLflow stayed silent for longer than the timeout."""


class MLflowFailed(Exception):
    """MLflow closed the connection before the response was complete."""


class ClientGone(Exception):
    """The client closed its connection: nothing more is relayed for it."""


class _RequestConnection(HTTP1Connection):
    """tornado's client side of HTTP/1.1, with the request's framing decided by the relay: tornado
    chunks a body only for POST, PUT and PATCH without Content-Length, and would write any other
    method's body unframed."""

    def __init__(self, stream: iostream.IOStream, params: HTTP1ConnectionParameters, framing: Framing):
        super().__init__(stream, is_client=True, params=params)
        self.framing = framing

    def write_headers(self, start_line, headers, chunk=None):
        future = super().write_headers(start_line, headers, chunk)
        self._chunking_output = self.framing.chunked
        return future


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
        self._keep_alive = False  # MLflow's response is framed and leaves the connection open
        self.client_gone = False  # the client closed its connection
        self._head_request = False
        self._idle_connections: IdleConnections | None = None
        self._pool_key = None  # under which the idle connections keep this one
        self._watchdog: asyncio.TimerHandle | None = None

    # --- the request --------------------------------------------------------------------
    async def open(self, tcp_client, request, framing: Framing, idle_connections: IdleConnections | None = None, pool_key=None) -> None:
        """Connect to MLflow (or take an idle connection kept under `pool_key`) and send the
        request's headers, framed as `framing` says; its body follows with send()."""
        url = urlsplit(request.url)
        self._wait_on_mlflow()
        self._arm_watchdog()
        self._idle_connections, self._pool_key = idle_connections, pool_key
        stream = idle_connections.take(pool_key) if idle_connections is not None else None
        if stream is None:
            stream = await self._connect(tcp_client, url)
        stream.set_nodelay(True)
        stream.read_chunk_size = READ_SIZE
        if self.closed:  # the client left while we connected
            stream.close()
            raise self.failure()
        params = HTTP1ConnectionParameters(chunk_size=CHUNK, max_body_size=sys.maxsize)
        self.connection = _RequestConnection(stream, params, framing)
        self._head_request = request.method == "HEAD"  # its response has no body, whatever it says
        headers = httputil.HTTPHeaders(request.headers)
        headers.pop("Expect", None)  # Jupyter answered 100-continue itself, after authenticating
        for name in FRAMING_HEADERS:
            headers.pop(name, None)
        if framing.chunked:
            headers["Transfer-Encoding"] = "chunked"
        elif framing.length is not None:
            headers["Content-Length"] = str(framing.length)
        elif request.method in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = "0"  # or tornado would send an empty chunked body
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
        if not self.connection.framing.has_body:
            # Never reached (tornado reads no body without framing): bytes with no framing would
            # be MLflow's next request. The connection goes, the request fails.
            self.abort()
            return
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
                self.upload_cut = readable(stream)
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
        """The exchange is over: the connection goes back for the next request if both messages
        ended exactly (the request's framing complete, the response read to its framed end) and
        MLflow keeps it open; otherwise it is closed."""
        if self.complete and self._request_sent and self._keep_alive and not self.closed and self._idle_connections is not None:
            self._idle_connections.give_back(self._pool_key, self.connection.detach())
        else:
            self._hang_up()

    async def _read_answer(self) -> None:
        try:
            await self.connection.read_response(self)
        except iostream.StreamClosedError:  # MLflow hung up before its answer's headers
            self.abort()

    def failure(self) -> Exception:
        if self.client_gone:
            return ClientGone("the client closed its connection")
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
        # Reusable only if the response's end is framed (not read until MLflow closes).
        framed = "Content-Length" in headers or "Transfer-Encoding" in headers or start_line.code in (204, 304) or self._head_request
        self._keep_alive = framed and start_line.version == "HTTP/1.1" and headers.get("Connection", "").lower() != "close"
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
                self.abort(client_gone=True)  # stop reading from MLflow
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
    def abort(self, client_gone: bool = False) -> None:
        """Drop the connection to MLflow (the client left, or MLflow stalled or failed)."""
        self.client_gone = self.client_gone or client_gone
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
