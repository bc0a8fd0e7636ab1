"""The single-user front door: MLflow served under Jupyter's port and login.

The relay (relay/handler.py) streams, frames, checks origins and scrubs credentials; this handler
adds what is Jupyter's: its login (a browser is sent to the login page, an API client gets a 401
it can read), an operator's `ServerApp.allow_origin`, and jupyter-server-proxy's way of building
the request MLflow gets (hop-by-hop headers, the target's quoting, X-Forwarded-Context, the
Location prefix, its unix-socket resolver), which jupyter-server-proxy's own test suite checks
through this handler (tests/support/jsp_suite.py).
"""

from __future__ import annotations

import re
from pathlib import Path

from jupyter_server_proxy.handlers import NamedLocalProxyHandler
from tornado import web
from tornado.tcpclient import TCPClient

from ..config import JupyterSettings
from ..relay import scrub
from ..relay.handler import RelayHandler
from ..traffic_gate import TrafficGate
from . import mistakes

# The limits' defaults, as the configuration states them (a Jupyter server given no options).
DEFAULT_MAX_UPLOAD_SIZE = JupyterSettings.model_fields["max_upload_size"].default
DEFAULT_MLFLOW_TIMEOUT = JupyterSettings.model_fields["mlflow_timeout"].default


class MLflowProxyHandler(RelayHandler, NamedLocalProxyHandler):
    """Proxy to MLflow (its unix socket, or its loopback port), for the /mlflow/ and /proxy/<port>/ routes."""

    def initialize(
        self,
        port: int,
        proxy_base: str = "",
        unix_socket: str | None = None,
        max_upload_size: int = DEFAULT_MAX_UPLOAD_SIZE,
        mlflow_timeout: float = DEFAULT_MLFLOW_TIMEOUT,
        traffic_gate: Path | None = None,
    ) -> None:
        self.port = port  # the route's port; MLflow's own too unless it listens on unix_socket
        # jupyter-server-proxy connects here (its UnixResolver) instead of localhost:port when set.
        self.unix_socket = unix_socket
        self.proxy_base = proxy_base  # "" -> redirects are rewritten under /proxy/<port>/
        self.initialize_relay(max_upload_size, mlflow_timeout, TrafficGate(traffic_gate))
        self._location_context: tuple | None = None  # (host, port, proxied path) for the Location prefix

    # --- Jupyter's login, as an MLflow client understands it ------------------------------------
    async def authenticate(self) -> None:
        # A plain look at the raw query, before the login reads the wrong token from it.
        if misplaced := mistakes.token_in_tracking_uri(self):
            raise web.HTTPError(400, misplaced)
        try:
            await NamedLocalProxyHandler.prepare(self)  # authenticates; redirects (browsers) or refuses if not
        except web.HTTPError as refusal:
            if refusal.status_code == 403 and self.current_user is None and self._api_client():
                raise self._unauthenticated() from None  # a write without credentials
            raise
        if not self._finished and self._token_in_address_bar():
            # Logged in now (Jupyter set its login cookie): the same page without the token, so
            # it leaves the address bar, the history and what a screenshot shows.
            self.set_header("Cache-Control", "no-store")
            # Answered before the (streamed) body is read, tornado hangs up after it: say so.
            self.set_header("Connection", "close")
            self.redirect(scrub.strip_url(self.request.uri, self.secret))

    def _token_in_address_bar(self) -> bool:
        """A browser's page request that logged in with ?token=."""
        return (
            self.request.method == "GET"
            and self.current_user is not None
            and not self._api_client()
            and any(scrub.is_token_key(key) for key in self.request.query_arguments)
        )

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
        presented = scrub.AUTH_SCHEME.match(self.request.headers.get("Authorization", "")) or any(
            scrub.is_token_key(key) for key in self.request.query_arguments
        )
        where = "set MLFLOW_TRACKING_TOKEN to the Jupyter token (`mlproxy url` prints it on the server)"
        if presented:
            return web.HTTPError(401, f"the token is wrong: this MLflow is behind Jupyter's login and refused it; {where}")
        return web.HTTPError(401, f"no token: this MLflow is behind Jupyter's login; {where}")

    @property
    def secret(self) -> str | None:
        """The token this Jupyter server accepts, if it has one (a password-only server has none)."""
        return getattr(self.identity_provider, "token", None) or None

    @property
    def cookie_authenticated(self) -> bool:
        return not self.token_authenticated

    def origin_allowed(self, origin: str) -> bool:
        """Honour an operator's explicit ServerApp.allow_origin / allow_origin_pat (never '*')."""
        if self.allow_origin and self.allow_origin != "*":
            return origin == self.allow_origin
        if self.allow_origin_pat:
            return bool(re.match(self.allow_origin_pat, origin))
        return False

    # --- the request MLflow gets, built by jupyter-server-proxy --------------------------------
    async def forward(self) -> None:
        await NamedLocalProxyHandler.proxy(self, self.port, self.path_args[0])

    def proxy_request_headers(self):
        return self.mlflow_headers(super().proxy_request_headers(), f"127.0.0.1:{self.port}", self.identity_provider.get_cookie_name(self))

    def get_client_uri(self, protocol, host, port, proxied_path):
        return self.mlflow_target(super().get_client_uri(protocol, host, port, proxied_path))

    async def _proxy_buffered(self, host, port, proxied_path, body, client):
        """jupyter-server-proxy's proxy() ends here (and in _proxy_progressive): relay, not buffer."""
        request = self._build_proxy_request(host, port, proxied_path, body)
        self._location_context = (host, port, proxied_path)
        try:
            # The client jupyter-server-proxy made knows how to reach MLflow (TCP or its unix socket).
            tcp_client = getattr(client, "tcp_client", None) or TCPClient()
            # Connections are kept per MLflow address.
            await self.relay_to_mlflow(tcp_client, request, pool_key=(self.unix_socket, host, port))
        finally:
            client.close()
            self._record_activity()

    _proxy_progressive = _proxy_buffered  # text/event-stream: streamed like everything else

    def rewrite_location(self, location: str) -> str:
        if self.absolute_url or self._location_context is None:
            return location
        return self._rewrite_location_header(location, *self._location_context)
