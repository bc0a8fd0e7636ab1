"""The relay's request handler: what a front door (Jupyter's extension, or the Hub service) serves
MLflow with. No jupyter_server here: each door adds its own login and its own way to build the
request MLflow gets, and every rule below is written once for both.

Streaming. Artifacts are models of several GB, so the handler is a `stream_request_body` handler
and relays every request, small or large, the same way:

1. prepare(), after the request's headers and BEFORE any body byte is read: the door's
   authentication (`authenticate`), the origin rule (origin.py), websocket and framing checks, the
   size limit (413 naming `jupyter.max_upload_size`), then `forward()` (the door's) builds the
   request MLflow gets and calls `relay_to_mlflow`, in a task, whose `Relay` (stream.py) connects
   to MLflow and sends the headers. A refused upload is answered without reading its body (a small
   one is read and dropped first, so the client sees the answer); tornado then closes the
   connection.
2. data_received(), per body chunk: forwarded to MLflow; tornado reads the next chunk only once
   this one is written to MLflow's socket (back-pressure upstream).
3. The HTTP method, once the body is in, lands in `_finish_relay()`: the relay finishes the request
   and streams MLflow's response to the client, each chunk flushed before the next is read from
   MLflow (back-pressure downstream).

A client that disconnects aborts the relay, which closes the connection to MLflow (MLflow then
discards a partial upload), and is logged as the client's doing; requests it pipelined before
leaving are not relayed. MLflow refusing connections (stopped, restarting, not ready) gives a 503
with Retry-After (and, for a browser, a page that reloads itself); MLflow silent for the timeout
while we wait on it gives a 504.
"""

from __future__ import annotations

import asyncio
import copy
import select
import sys
import traceback
from urllib.parse import urlsplit, urlunsplit

from tornado import httputil, web

from ..traffic_gate import CLOSED_MESSAGE, TrafficGate
from . import answers, origin, scrub
from .pool import IdleConnections
from .stream import (
    READ_SIZE,
    ClientGone,
    Framing,
    MLflowFailed,
    MLflowTimeout,
    MLflowUnreachable,
    Relay,
    request_framing,
)

SMALL_BODY = 1 << 20  # bytes; a refused request with a body up to this size is read before the answer
# Keep-alive connections to MLflow, shared by every request this process relays.
IDLE_CONNECTIONS = IdleConnections()
# Request headers that describe the client's hop, not the request (RFC 9110 7.6.1), and the
# proxy headers a client could forge.
HOP_HEADERS = ("Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "TE", "Trailer", "Upgrade",
               "Proxy-Authorization", "Proxy-Authenticate", "Expect")  # fmt: skip


@web.stream_request_body
class RelayHandler(web.RequestHandler):
    """The relay's side of a handler. A door subclasses it (before its own base classes) and gives:

    - `authenticate()`: its login; raises HTTPError or finishes the request (a redirect);
    - `forward()`: builds the request MLflow gets and awaits `relay_to_mlflow` with it;
    - `secret`: the credential the client presented (to scrub and mask), and `cookie_authenticated`;
    - optionally `origin_allowed(origin)`, `rewrite_location(location)`, `own_error_codes`.
    """

    max_upload_size: int
    mlflow_timeout: float
    own_error_codes = frozenset(answers.ERROR_CODES) - {403}  # the doors' logins answer 403 their own way

    def initialize_relay(self, max_upload_size: int, mlflow_timeout: float, gate: TrafficGate) -> None:
        self.max_upload_size = max_upload_size
        self.mlflow_timeout = mlflow_timeout
        self.gate = gate  # closed until the agent finds MLflow ready (traffic_gate.py)
        self._relay: Relay | None = None
        self._relayed: asyncio.Future | None = None  # the door's forward(), driving the relay
        self._received = 0  # request body bytes so far
        self._refusal: web.HTTPError | None = None  # given once the (small) body is in
        self._framing = Framing()  # of the client's body, and so of the body MLflow gets

    # --- what a door gives ---------------------------------------------------------------------
    async def authenticate(self) -> None:
        raise NotImplementedError

    async def forward(self) -> None:
        raise NotImplementedError

    @property
    def secret(self) -> str | None:
        return None

    @property
    def cookie_authenticated(self) -> bool:
        return True

    def origin_allowed(self, origin: str) -> bool:
        return False

    def rewrite_location(self, location: str) -> str:
        return location

    # --- before the body -------------------------------------------------------------------------
    async def prepare(self) -> None:
        try:
            await self.authenticate()
            if not self._finished:
                self._refuse_foreign_origin()
                await self._start_relay()
        except ClientGone:
            self.relay_log.info("Client left before %s was relayed: not sent to MLflow", self._request_summary())
            self._hang_up()
        except web.HTTPError as refusal:
            if not 0 < self._declared_length() <= SMALL_BODY:
                raise  # answered now; tornado hangs up without reading the body
            # Hanging up on unread bytes makes the kernel reset the connection, and the client may
            # never see the answer: a small body is read (and dropped) first, then refused.
            self._refusal = refusal

    @property
    def front_scheme(self) -> str:
        """The scheme the client reached the door with (a door behind a TLS proxy knows better)."""
        return self.request.protocol

    def _origin_refusal(self, given_origin: str | None, referer: str | None, cookie_authenticated: bool) -> str | None:
        why = origin.refusal(self.request.method, given_origin, referer, self.request.headers.get("Host", ""),
                             self.front_scheme, cookie_authenticated, self.origin_allowed)  # fmt: skip
        if why is not None and given_origin is not None:
            self.relay_log.warning("Refused cross-origin %s %s from %s", self.request.method, self.request.path, given_origin)
        elif why is not None:
            self.relay_log.warning("Refused %s %s: %s", self.request.method, self.request.path, why)
        return why

    def _refuse_foreign_origin(self) -> None:
        headers = self.request.headers
        why = self._origin_refusal(headers.get("Origin"), headers.get("Referer"), self.cookie_authenticated)
        if why is not None:
            raise web.HTTPError(403, why)

    def _declared_length(self) -> int:
        """The request's Content-Length as tornado reads it; 0 for none, chunked, or one tornado
        refuses (it answers 400 itself)."""
        try:
            return request_framing(self.request.headers).length or 0
        except (httputil.HTTPInputError, ValueError):
            return 0

    def _client_gone(self) -> bool:
        """Whether the client has closed its connection (or reset it). Requests it pipelined
        before closing are still in tornado's buffer; like nginx (which aborts a proxied request
        on the client's end of file), we relay none of them."""
        stream = self.request.connection.stream
        if stream is None or stream.closed():
            return True
        ended = select.poll()
        ended.register(stream.fileno(), select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        return bool(ended.poll(0))

    def _hang_up(self) -> None:
        """Close the client's connection with no (further) answer."""
        self.request.connection.close()
        self._finished = True

    async def _start_relay(self) -> None:
        if self.request.method == "GET" and self.request.headers.get("Upgrade", "").lower() == "websocket":
            # MLflow serves no websocket (its app closes any). An Upgrade on any other method is
            # a hop-by-hop header, dropped: the request is relayed as plain HTTP.
            raise web.HTTPError(400, "MLflow serves no websockets: send plain HTTP requests to this route")
        try:
            self._framing = request_framing(self.request.headers)
        except (httputil.HTTPInputError, ValueError) as error:
            # tornado refuses the same framing before reading a body; say why, and relay nothing.
            raise web.HTTPError(400, f"the request's body framing is invalid ({error}): send one plain Content-Length, or Transfer-Encoding: chunked") from None
        if self._client_gone():
            raise ClientGone()
        if not self.gate.is_open():
            raise web.HTTPError(503, CLOSED_MESSAGE)
        declared = self._framing.length or 0
        if declared > self.max_upload_size:
            raise web.HTTPError(413, self._too_large(declared))
        # The server's max_body_size (Jupyter's: 512 MB) would refuse bigger bodies with a bare
        # 400; ours is counted in data_received(), for chunked bodies too.
        connection = self.request.connection
        connection.set_max_body_size(sys.maxsize)
        # The body in READ_SIZE chunks, not 64 KiB: fewer trips through data_received. The server
        # shares one parameters object between its connections: copy it.
        connection.params = copy.copy(connection.params)
        connection.params.chunk_size = READ_SIZE
        connection.stream.read_chunk_size = READ_SIZE
        self._relay = Relay(self, self.mlflow_timeout, flush=lambda: web.RequestHandler.flush(self), rewrite_location=self._rewrite_location)
        # A door may edit the request's headers in place (jupyter-server-proxy drops hop-by-hop
        # ones), and tornado still needs the originals (Transfer-Encoding) to read the body.
        self.request.headers = httputil.HTTPHeaders(self.request.headers)
        self._relayed = asyncio.ensure_future(self.forward())
        self._relayed.add_done_callback(lambda task: task.cancelled() or task.exception())  # reported where awaited
        await asyncio.wait([self._relay.opened, self._relayed], return_when=asyncio.FIRST_COMPLETED)
        if self._relayed.done():
            self._relayed.result()  # MLflow unreachable, a refused target, ...: raises its HTTPError

    # --- the request MLflow gets -------------------------------------------------------------
    def mlflow_headers(self, headers: httputil.HTTPHeaders, loopback: str, own_cookie: str) -> httputil.HTTPHeaders:
        """The client's headers as MLflow gets them: the front door authenticated the request and
        checked its origin, and MLflow's own checks guard its loopback port against DNS
        rebinding, so it must see a loopback request (Host, Origin); none of the door's
        credentials go on."""
        headers["Host"] = loopback
        if "Origin" in headers:
            headers["Origin"] = f"http://{loopback}"
        scrub.strip_headers(headers, self.secret, own_cookie)
        return headers

    def mlflow_target(self, uri: str) -> str:
        """The URI MLflow is sent, scrubbed as MLflow will split it: a door that decodes the path
        and quotes it again with `?` kept (jupyter-server-proxy) turns /mlflow/health%3Ftoken=T
        into /health?token=T, so the query scrubbed is the one after that split."""
        try:
            parts = urlsplit(uri)
        except ValueError as error:  # e.g. "//[x": an unbalanced bracket where a host would be
            raise web.HTTPError(400, f"the request's target cannot be read ({error})") from None
        # The login reads `token` from the decoded query, so %74oken= logs in too: strip every spelling.
        uri = urlunsplit(parts._replace(query=scrub.strip_query(parts.query, self.secret)))
        if scrub.holds_secret(uri, self.secret):
            raise web.HTTPError(400, "the login token is in the request's path; send it in the Authorization header (MLFLOW_TRACKING_TOKEN)")
        return uri

    async def relay_to_mlflow(self, tcp_client, request, pool_key) -> None:
        """Open the relay to MLflow with `request` (a tornado HTTPRequest) and stream the answer."""
        relay = self._relay
        try:
            await relay.open(tcp_client, request, self._framing, IDLE_CONNECTIONS, pool_key=pool_key)
            await relay.respond()
        except ClientGone:
            self.relay_log.info("Client closed its connection during %s; its connection to MLflow was dropped", self._request_summary())
            self._hang_up()
        except (MLflowUnreachable, MLflowTimeout, MLflowFailed) as error:
            if not self._headers_written:
                raise self._http_error(error) from None
            # Mid-response: all we can do is cut the connection (the client sees a short body).
            self.relay_log.warning("MLflow's response to %s cut short: %s", self._request_summary(), error)
            self._hang_up()

    def _rewrite_location(self, location: str) -> str:
        """MLflow builds absolute redirects from the loopback Host it was given
        (/static-files//x -> http://127.0.0.1:<port>/static-files/x): serve them under the door's
        route instead, so the browser follows them there and the internal address never leaks."""
        try:
            parts = urlsplit(location)
            internal = parts.hostname in ("127.0.0.1", "localhost", "::1")
        except ValueError:
            internal = False
        if internal:
            # One leading slash: "//host/x" would be another site's address.
            location = urlunsplit(parts._replace(scheme="", netloc="", path="/" + parts.path.lstrip("/")))
        return self.rewrite_location(location)

    # --- the body and the answer ---------------------------------------------------------------
    async def data_received(self, chunk: bytes) -> None:
        if self._finished or self._refusal is not None:
            return
        self._received += len(chunk)
        if self._received > self.max_upload_size:
            self._relay.abort()
            self.send_error(413, message=self._too_large(self._received, declared=False))
            return
        await self._relay.send(chunk)
        if self._relay.closed and not self._finished:  # MLflow stalled or failed mid-upload: say so now
            failure = self._relay.failure()
            if isinstance(failure, ClientGone):
                return  # tornado ends the request; nobody to answer
            error = self._http_error(failure)
            self.send_error(error.status_code, message=error.log_message)

    async def _finish_relay(self, *args) -> None:
        """Every HTTP method lands here once the request body is in (tornado calls the method then)."""
        if self._refusal is not None:
            raise self._refusal
        self._relay.end_body()
        await self._relayed

    get = post = put = patch = delete = head = options = _finish_relay

    def _http_error(self, error: Exception) -> web.HTTPError:
        status = 503 if isinstance(error, MLflowUnreachable) else 504 if isinstance(error, MLflowTimeout) else 502
        self.relay_log.warning("MLflow did not answer %s: %s", self._request_summary(), error)
        return web.HTTPError(status, f"MLflow did not answer: {error}")

    def _too_large(self, size: int, declared: bool = True) -> str:
        what = f"a {size}-byte body" if declared else f"a body of more than {size - 1} bytes"
        return (
            f"{what} exceeds jupyter.max_upload_size = {self.max_upload_size} bytes; raise it in mlproxy.toml "
            "([jupyter] max_upload_size) or with MLPROXY_JUPYTER__MAX_UPLOAD_SIZE"
        )

    def on_connection_close(self) -> None:
        super().on_connection_close()  # a websocket door's cleanup, and tornado's own
        # tornado's WebSocketHandler does not chain this, so the streamed body's future would wait
        # forever: fail it as tornado's RequestHandler does, and drop MLflow's connection.
        web.RequestHandler.on_connection_close(self)
        if self._relay is not None:
            self._relay.abort(client_gone=True)

    def on_finish(self) -> None:
        if self._relay is not None and not self._relay.complete:
            self._relay.abort()  # refused mid-upload: MLflow must not keep a half request

    def write_error(self, status_code: int, **kwargs) -> None:
        """Our own errors, as an API client or a browser wants them; the rest as the door renders them."""
        if status_code not in self.own_error_codes:
            if "Content-Length" in self.request.headers or "Transfer-Encoding" in self.request.headers:
                # The door's own refusals from prepare(): tornado hangs up on the unread body,
                # so tell the client not to reuse the connection.
                self.set_header("Connection", "close")
            return super().write_error(status_code, **kwargs)
        message = kwargs.get("message")
        if message is None and "exc_info" in kwargs:
            error = kwargs["exc_info"][1]
            message = getattr(error, "log_message", None) or str(error)
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="mlflow"')
        answers.write(self, status_code, message)

    # --- logs: never the credential ------------------------------------------------------------
    def _request_summary(self) -> str:
        """What tornado's log lines name the request by: its URI with the login's query keys
        scrubbed, and the secret masked wherever else it is."""
        uri = scrub.strip_url(self.request.uri, self.secret)
        if self.secret:
            uri = scrub.secret_pattern(self.secret).mask(uri)
        return f"{self.request.method} {uri} ({self.request.remote_ip})"

    def log_exception(self, typ, value, tb) -> None:
        """tornado logs an uncaught exception with `%r` of the request, whose raw URI may hold the
        token: log the scrubbed summary and a masked traceback instead."""
        if isinstance(value, web.HTTPError):
            super().log_exception(typ, value, tb)  # the summary above and the refusal's reason
            return
        text = "".join(traceback.format_exception(typ, value, tb))
        if self.secret:
            text = scrub.secret_pattern(self.secret).mask(text)
        self.relay_log.error("Uncaught exception in %s\n%s", self._request_summary(), text)

    @property
    def relay_log(self):
        """The door's log (Jupyter's server log, the service's), else tornado's."""
        return getattr(self, "log", None) or web.app_log
