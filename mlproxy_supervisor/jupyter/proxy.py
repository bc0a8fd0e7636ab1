"""The handler that serves MLflow under Jupyter: jupyter-server-proxy's, streaming, with an origin check.

Origin. jupyter-server-proxy skips Jupyter's XSRF check for proxied requests ("defer to the
proxied app"), and MLflow trusts every localhost Origin on any port. A page on another port of the
same host is the same *site*, so the browser attaches the Jupyter login cookie to its requests.
This handler therefore refuses any request whose Origin is not Jupyter's own, and only then
presents the request to MLflow as a loopback one (Host and Origin), which MLflow's Host and CORS
checks accept. Reaching Jupyter as myvm.example.com:8888 thus works, and a cross-origin write is
still refused.

Streaming. jupyter-server-proxy reads a whole request body before the handler runs (Jupyter
refuses bodies over its 512 MB max_body_size with a bare 400) and its HTTP client buffers whole
responses (and gives up over 100 MB). Artifacts are models of several GB, so this handler is a
`stream_request_body` handler and relays every request, small or large, the same way:

1. prepare(), after the request's headers and BEFORE any body byte is read: Jupyter's
   authentication, the origin check, the size limit (413 naming `jupyter.max_upload_size`), then
   jupyter-server-proxy's own proxy() (host allowlist, hop-by-hop headers, the request's URI and
   headers from get_client_uri() and proxy_request_headers()) starts, in a task, a `Relay`
   (relay.py) that connects to MLflow and sends the headers. An unauthenticated or refused upload
   is answered without reading its body; tornado then closes the connection.
2. data_received(), per body chunk: forwarded to MLflow; tornado reads the next chunk only once
   this one is written to MLflow's socket (back-pressure upstream).
3. The HTTP method (post, put, ...), once the body is in, lands in proxy(): the relay finishes
   the request and streams MLflow's response to the client, each chunk flushed to the client
   before the next is read from MLflow (back-pressure downstream).

A client that disconnects aborts the relay, which closes the connection to MLflow (MLflow then
discards a partial upload), and is logged as the client's doing; requests it pipelined before
leaving are not relayed. MLflow refusing connections (stopped, restarting, not ready) gives a
503 with Retry-After (and, for a browser, a page that reloads itself); MLflow silent for
`jupyter.mlflow_timeout` seconds while we wait on it gives a 504.
"""

from __future__ import annotations

import asyncio
import copy
import html
import json
import re
import select
import sys
import traceback
from urllib.parse import urlsplit, urlunsplit

from jupyter_server.base.handlers import JupyterHandler
from jupyter_server_proxy.handlers import NamedLocalProxyHandler
from tornado import httputil, web
from tornado.tcpclient import TCPClient

from ..config import JupyterSettings
from . import scrub
from .connections import IdleConnections
from .relay import (
    READ_SIZE,
    ClientGone,
    Framing,
    MLflowFailed,
    MLflowTimeout,
    MLflowUnreachable,
    Relay,
    request_framing,
)

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The limits' defaults, as the configuration states them (a Jupyter server given no options).
DEFAULT_MAX_UPLOAD_SIZE = JupyterSettings.model_fields["max_upload_size"].default
DEFAULT_MLFLOW_TIMEOUT = JupyterSettings.model_fields["mlflow_timeout"].default
SMALL_BODY = 1 << 20  # bytes; a refused request with a body up to this size is read before the answer
RETRY_AFTER = 5  # seconds, for clients while MLflow is not answering
# Our errors, as MLflow's REST API spells them (its clients read error_code; they retry 503).
ERROR_CODES = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 413: "RESOURCE_EXHAUSTED", 502: "TEMPORARILY_UNAVAILABLE", 503: "TEMPORARILY_UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
UNAVAILABLE_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="{retry}"><title>MLflow is starting</title></head>
<body style="font-family: sans-serif; margin: 3em">
<h1>MLflow is not answering yet</h1>
<p>{message}</p>
<p>It is starting or restarting (<code>mlproxy status</code> tells which). This page reloads itself every {retry} seconds.</p>
</body></html>
"""


DEFAULT_PORTS = {"http": 80, "https": 443}
# Keep-alive connections to MLflow, shared by every request this Jupyter server relays.
IDLE_CONNECTIONS = IdleConnections()


def same_origin(origin: str, host: str, scheme: str) -> bool:
    """Whether an Origin header is exactly the origin the request was sent to: the request's own
    scheme, its Host's name and its port (defaults filled in). An Origin is scheme://host[:port]
    and nothing more (RFC 6454): one with a path, a query, user info or another scheme is not ours."""
    if not origin or scheme not in DEFAULT_PORTS:
        return False
    try:
        given = urlsplit(origin)
        ours = urlsplit(f"{scheme}://{host}")
        given_port = given.port or DEFAULT_PORTS.get(given.scheme)
        our_port = ours.port or DEFAULT_PORTS[scheme]
    except ValueError:  # a port that is not a number, an unbalanced [
        return False
    return (
        origin.lower() == f"{given.scheme}://{given.netloc}".lower()  # no path, query or fragment
        and "@" not in given.netloc
        and given.scheme == scheme
        and bool(given.hostname)
        and given.hostname == ours.hostname
        and given_port == our_port
    )


@web.stream_request_body
class MLflowProxyHandler(NamedLocalProxyHandler):
    """Proxy to MLflow (its unix socket, or its loopback port), for the /mlflow/ and /proxy/<port>/ routes."""

    def initialize(
        self,
        port: int,
        proxy_base: str = "",
        unix_socket: str | None = None,
        max_upload_size: int = DEFAULT_MAX_UPLOAD_SIZE,
        mlflow_timeout: float = DEFAULT_MLFLOW_TIMEOUT,
    ) -> None:
        self.port = port  # the route's port; MLflow's own too unless it listens on unix_socket
        # jupyter-server-proxy connects here (its UnixResolver) instead of localhost:port when set.
        self.unix_socket = unix_socket
        self.proxy_base = proxy_base  # "" -> redirects are rewritten under /proxy/<port>/
        self.max_upload_size = max_upload_size
        self.mlflow_timeout = mlflow_timeout
        self._relay: Relay | None = None
        self._relayed: asyncio.Task | None = None  # jupyter-server-proxy's proxy(), driving the relay
        self._received = 0  # request body bytes so far
        self._refusal: web.HTTPError | None = None  # given once the (small) body is in
        self._framing = Framing()  # of the client's body, and so of the body MLflow gets

    async def prepare(self, *args, **kwargs) -> None:
        try:
            try:
                await super().prepare(*args, **kwargs)  # authenticates; redirects (browsers) or refuses if not
            except web.HTTPError as refusal:
                if refusal.status_code == 403 and self.current_user is None and self._api_client():
                    raise self._unauthenticated() from None  # a write without credentials
                raise
            if not self._finished:
                self._refuse_foreign_origin()
                await self._start_relay()
        except ClientGone:
            self.log.info("Client left before %s was relayed: not sent to MLflow", self._request_summary())
            self._hang_up()
        except web.HTTPError as refusal:
            if not 0 < self._declared_length() <= SMALL_BODY:
                raise  # answered now; tornado hangs up without reading the body
            # Hanging up on unread bytes makes the kernel reset the connection, and the client may
            # never see the answer: a small body is read (and dropped) first, then refused.
            self._refusal = refusal

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

    # --- authentication, as an MLflow client understands it -----------------------------------
    def get_login_url(self) -> str:
        """Where tornado's @authenticated sends an unauthenticated GET. Both JupyterHandler.prepare
        and jupyter-server-proxy's prepare() apply it (so `_redirect_to_login=False` alone still
        redirects): a browser goes to the login page, an API client gets a 401 it can read."""
        if self._api_client():
            raise self._unauthenticated()
        return super().get_login_url()

    def _api_client(self) -> bool:
        """A program, not a person: an MLflow API path, or a request that does not accept HTML."""
        path = "/" + (self.path_args[0] if self.path_args else "").lstrip("/")
        if self.request.method == "OPTIONS":  # a browser's CORS preflight: refused as Jupyter does
            return False
        return path.startswith(("/api/", "/ajax-api/")) or "text/html" not in self.request.headers.get("Accept", "")

    def _unauthenticated(self) -> web.HTTPError:
        presented = scrub.JUPYTER_AUTH_SCHEME.match(self.request.headers.get("Authorization", "")) or any(
            scrub.is_token_key(key) for key in self.request.query_arguments
        )
        where = "set MLFLOW_TRACKING_TOKEN to the Jupyter token (`mlproxy url` prints it on the server)"
        if presented:
            return web.HTTPError(401, f"the token is wrong: this MLflow is behind Jupyter's login and refused it; {where}")
        return web.HTTPError(401, f"no token: this MLflow is behind Jupyter's login; {where}")

    def _request_summary(self) -> str:
        """What tornado's log lines name the request by (e.g. beside a 401's reason): its URI with
        Jupyter's credentials scrubbed, and the token masked wherever else it is."""
        token = scrub.jupyter_token(self)
        uri = scrub.strip_url(self.request.uri, token)
        if token:
            uri = scrub.secret_pattern(token).mask(uri)
        return f"{self.request.method} {uri} ({self.request.remote_ip})"

    def log_exception(self, typ, value, tb) -> None:
        """tornado logs an uncaught exception with `%r` of the request, whose raw URI may hold the
        token: log the scrubbed summary and a masked traceback instead."""
        if isinstance(value, web.HTTPError):
            super().log_exception(typ, value, tb)  # the summary above and the refusal's reason
            return
        text = "".join(traceback.format_exception(typ, value, tb))
        token = scrub.jupyter_token(self)
        if token:
            text = scrub.secret_pattern(token).mask(text)
        self.log.error("Uncaught exception in %s\n%s", self._request_summary(), text)

    def _refuse_foreign_origin(self) -> None:
        host = self.request.headers.get("Host", "")
        origin = self.request.headers.get("Origin")
        if origin is not None:
            if same_origin(origin, host, self.request.protocol) or self._origin_allowed_by_jupyter(origin):
                return
            self.log.warning("Refused cross-origin %s %s from %s", self.request.method, self.request.path, origin)
            raise web.HTTPError(403, f"cross-origin request from {origin} refused")
        # Browsers send Origin with every write; a cookie-authenticated write without one is only
        # accepted with a same-origin Referer (Jupyter's own rule for such requests).
        if self.request.method in UNSAFE_METHODS and not self.token_authenticated and not JupyterHandler.check_referer(self):
            raise web.HTTPError(403, "write without Origin or same-origin Referer refused")

    def _origin_allowed_by_jupyter(self, origin: str) -> bool:
        """Honour an operator's explicit ServerApp.allow_origin / allow_origin_pat (never '*')."""
        if self.allow_origin and self.allow_origin != "*":
            return origin == self.allow_origin
        if self.allow_origin_pat:
            return bool(re.match(self.allow_origin_pat, origin))
        return False

    def proxy_request_headers(self):
        headers = super().proxy_request_headers()
        loopback = f"127.0.0.1:{self.port}"
        # Jupyter authenticated this request and checked its origin above; MLflow's own checks
        # guard its loopback port against DNS rebinding, so it must see a loopback request.
        headers["Host"] = loopback
        if "Origin" in headers:
            headers["Origin"] = f"http://{loopback}"
        # Jupyter's credentials are not MLflow's: keep them out of its requests and logs.
        scrub.strip_headers(headers, scrub.jupyter_token(self), self.identity_provider.get_cookie_name(self))
        return headers

    # --- streaming (see the module's docstring) ----------------------------------------------
    async def _start_relay(self) -> None:
        if self.request.method == "GET" and self.request.headers.get("Upgrade", "").lower() == "websocket":
            # MLflow serves no websocket (its app closes any), and jupyter-server-proxy's
            # websocket path would bypass the relay. An Upgrade on any other method is a
            # hop-by-hop header, dropped: the request is relayed as plain HTTP.
            raise web.HTTPError(400, "MLflow serves no websockets: send plain HTTP requests to this route")
        try:
            self._framing = request_framing(self.request.headers)
        except (httputil.HTTPInputError, ValueError) as error:
            # tornado refuses the same framing before reading a body; say why, and relay nothing.
            raise web.HTTPError(400, f"the request's body framing is invalid ({error}): send one plain Content-Length, or Transfer-Encoding: chunked") from None
        if self._client_gone():
            raise ClientGone()
        declared = self._framing.length or 0
        if declared > self.max_upload_size:
            raise web.HTTPError(413, self._too_large(declared))
        # Jupyter's max_body_size (512 MB) would refuse bigger bodies with a bare 400; ours is
        # counted in data_received(), for chunked bodies too.
        self.request.connection.set_max_body_size(sys.maxsize)
        # The body in READ_SIZE chunks, not Jupyter's 64 KiB: fewer trips through data_received.
        # Jupyter's server shares one parameters object between its connections: copy it.
        connection = self.request.connection
        connection.params = copy.copy(connection.params)
        connection.params.chunk_size = READ_SIZE
        connection.stream.read_chunk_size = READ_SIZE
        self._relay = Relay(self, self.mlflow_timeout, flush=lambda: web.RequestHandler.flush(self))
        # jupyter-server-proxy edits the request's headers in place (hop-by-hop ones), and tornado
        # still needs the originals (Transfer-Encoding) to read the body: give it a copy.
        self.request.headers = httputil.HTTPHeaders(self.request.headers)
        self._relayed = asyncio.ensure_future(super().proxy(self.port, self.path_args[0]))
        self._relayed.add_done_callback(lambda task: task.cancelled() or task.exception())  # reported where awaited
        await asyncio.wait([self._relay.opened, self._relayed], return_when=asyncio.FIRST_COMPLETED)
        if self._relayed.done():
            self._relayed.result()  # MLflow unreachable, host not allowed, ...: raises its HTTPError

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

    async def proxy(self, port, path):
        """Every HTTP method lands here once the request body is in (tornado calls the method then)."""
        if self._refusal is not None:
            raise self._refusal
        self._relay.end_body()
        await self._relayed

    async def _proxy_buffered(self, host, port, proxied_path, body, client):
        """jupyter-server-proxy's proxy() ends here (and in _proxy_progressive): relay, not buffer."""
        request = self._build_proxy_request(host, port, proxied_path, body)
        relay = self._relay
        if not self.absolute_url:
            relay.rewrite_location = lambda location: self._rewrite_location_header(location, host, port, proxied_path)
        try:
            # The client jupyter-server-proxy made knows how to reach MLflow (TCP or its unix socket).
            tcp_client = getattr(client, "tcp_client", None) or TCPClient()
            # Connections are kept per MLflow address (team mode adds the user to the key).
            await relay.open(tcp_client, request, self._framing, IDLE_CONNECTIONS, pool_key=(self.unix_socket, host, port))
            await relay.respond()
        except ClientGone:
            self.log.info("Client closed its connection during %s; its connection to MLflow was dropped", self._request_summary())
            self._hang_up()
        except (MLflowUnreachable, MLflowTimeout, MLflowFailed) as error:
            if not self._headers_written:
                raise self._http_error(error) from None
            # Mid-response: all we can do is cut the connection (the client sees a short body).
            self.log.warning("MLflow's response to %s cut short: %s", self._request_summary(), error)
            self._hang_up()
        finally:
            client.close()
            self._record_activity()

    _proxy_progressive = _proxy_buffered  # text/event-stream: streamed like everything else

    def _http_error(self, error: Exception) -> web.HTTPError:
        status = 503 if isinstance(error, MLflowUnreachable) else 504 if isinstance(error, MLflowTimeout) else 502
        self.log.warning("MLflow did not answer %s: %s", self._request_summary(), error)
        return web.HTTPError(status, f"MLflow did not answer: {error}")

    def _too_large(self, size: int, declared: bool = True) -> str:
        what = f"a {size}-byte body" if declared else f"a body of more than {size - 1} bytes"
        return (
            f"{what} exceeds jupyter.max_upload_size = {self.max_upload_size} bytes; raise it in mlproxy.toml "
            "([jupyter] max_upload_size) or with MLPROXY_JUPYTER__MAX_UPLOAD_SIZE"
        )

    def on_connection_close(self) -> None:
        super().on_connection_close()  # the websocket side's cleanup
        # tornado's WebSocketHandler does not chain this, so the streamed body's future would wait
        # forever: fail it as tornado's RequestHandler does, and drop MLflow's connection.
        web.RequestHandler.on_connection_close(self)
        if self._relay is not None:
            self._relay.abort(client_gone=True)

    def on_finish(self) -> None:
        if self._relay is not None and not self._relay.complete:
            self._relay.abort()  # refused mid-upload: MLflow must not keep a half request

    def write_error(self, status_code: int, **kwargs) -> None:
        """Our own errors, as an API client or a browser wants them; the rest as Jupyter renders them."""
        if status_code not in ERROR_CODES:
            if "Content-Length" in self.request.headers or "Transfer-Encoding" in self.request.headers:
                # Jupyter's own refusals (403) from prepare(): tornado hangs up on the unread body,
                # so tell the client not to reuse the connection (as below).
                self.set_header("Connection", "close")
            return super().write_error(status_code, **kwargs)
        message = kwargs.get("message")
        if message is None and "exc_info" in kwargs:
            error = kwargs["exc_info"][1]
            message = getattr(error, "log_message", None) or str(error)
        if status_code in (502, 503, 504):
            self.set_header("Retry-After", str(RETRY_AFTER))
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="jupyter"')
        # Answered from prepare(), tornado hangs up after this response without saying so: say it,
        # or a client reusing the connection gets a reset.
        self.set_header("Connection", "close")
        if self.request.method == "GET" and "text/html" in self.request.headers.get("Accept", "") and status_code in (502, 503, 504):
            self.set_header("Content-Type", "text/html; charset=UTF-8")
            self.set_header("Cache-Control", "no-store")
            self.finish(UNAVAILABLE_PAGE.format(retry=RETRY_AFTER, message=html.escape(message or "")))
        else:
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"error_code": ERROR_CODES[status_code], "message": message}))

    def _rewrite_location_header(self, location, host, port, proxied_path):
        """MLflow builds absolute redirects from the loopback Host it was given
        (/static-files//x -> http://127.0.0.1:<port>/static-files/x): serve them under Jupyter's
        route instead, so the browser follows them there and the internal address never leaks."""
        try:
            parts = urlsplit(location)
            internal = parts.hostname in ("127.0.0.1", "localhost", "::1") and parts.port == self.port
        except ValueError:
            internal = False
        if internal:
            # One leading slash: "//host/x" would be another site's address.
            location = urlunsplit(parts._replace(scheme="", netloc="", path="/" + parts.path.lstrip("/")))
        return super()._rewrite_location_header(location, host, port, proxied_path)

    def get_client_uri(self, protocol, host, port, proxied_path):
        """The URI MLflow is sent, scrubbed as MLflow will split it. jupyter-server-proxy decodes
        the path and quotes it again with `?` kept as is, so /mlflow/health%3Ftoken=T reaches
        MLflow as /health?token=T: the query is the one after that split, not the client's."""
        uri = super().get_client_uri(protocol, host, port, proxied_path)
        token = scrub.jupyter_token(self)
        parts = urlsplit(uri)
        # Jupyter reads `token` from the decoded query, so %74oken= logs in too: strip every spelling.
        uri = urlunsplit(parts._replace(query=scrub.strip_query(parts.query, token)))
        if scrub.holds_secret(uri, token):
            raise web.HTTPError(400, "Jupyter's token is in the request's path; send it in the Authorization header (MLFLOW_TRACKING_TOKEN)")
        return uri
