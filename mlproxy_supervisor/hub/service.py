"""The team front door: MLflow as the JupyterHub service /services/<name>/, behind the Hub's login.

supervisord runs it (program:service) as `python -m mlproxy_supervisor.hub.service`. It listens on
loopback (team.service_port); the Hub's proxy forwards /services/<name>/ to it. Each request:

- is authenticated with the Hub (HubOAuth): a user's Hub API token (`Authorization: token|Bearer`,
  what kernels hold as $JUPYTERHUB_API_TOKEN) or the login cookie the OAuth flow set (browsers);
  the token or cookie must carry the scope access:services!service=<name>;
- cookie-authenticated requests pass the exact-Origin rule (relay/origin.py) instead of HubOAuth's
  `_xsrf` check, which MLflow's UI cannot send;
- is relayed to MLflow's unix socket by the relay (relay/handler.py: framing, streaming, the pool
  keyed by user, credential scrubbing), with X-MLproxy-User naming the Hub user: the only place
  MLflow learns who is calling (hub/identity.py).

It also walks the Hub's user list (every team.user_sync_period), so that every Hub user exists in MLflow's
auth store, with the admin flag of team.admin_group, before their first visit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated, UserNotAllowed
from tornado import httpclient, httpserver, ioloop, netutil, web
from tornado.tcpclient import TCPClient

from .. import credentials, local_http
from ..config import RESOLVED_ENV, Settings, read_resolved
from ..programs import (
    MLFLOW_LIVENESS,
    RESERVED_USER_PREFIX,
    SERVICE_LIVENESS,
    SERVICE_READINESS,
    SERVICE_USER_PREFIX,
)
from ..relay import answers, scrub
from ..relay.handler import HOP_HEADERS, RelayHandler
from ..traffic_gate import TrafficGate
from . import caller

ASSISTANT = "/ajax-api/3.0/mlflow/assistant"

log = logging.getLogger("mlproxy.service")


class UnixSocketResolver(netutil.Resolver):
    """Every host resolves to MLflow's unix socket."""

    def initialize(self, path: str) -> None:
        self.path = path

    async def resolve(self, host, port, family=socket.AF_UNSPEC):
        return [(socket.AF_UNIX, self.path)]


class MLflowServiceHandler(HubOAuthenticated, RelayHandler):
    """/services/<name>/...: the Hub's login, then the relay to MLflow. (HubOAuthenticated first: its
    login URL, user lookup and scopes come before tornado's defaults.)"""

    own_error_codes = frozenset(answers.ERROR_CODES)  # 403 too, as JSON an MLflow client shows

    def initialize(self, settings: Settings, hub_auth: HubOAuth, tcp_client: TCPClient, proof_secret: str) -> None:
        self.settings_ = settings
        self.hub_auth = hub_auth
        self.proof_secret = proof_secret  # the key of the proof that names the caller (hub/caller.py)
        self.tcp_client = tcp_client
        self.initialize_relay(settings.jupyter.max_upload_size, settings.jupyter.mlflow_timeout, TrafficGate(settings.traffic_gate_file))
        self._xsrf_refusal: str | None = None  # why a login cookie was not accepted
        self._token: str | None = None

    @property
    def hub_scopes(self) -> set[str]:
        return {f"access:services!service={self.settings_.team.service_name}"}

    # --- the Hub's login ---------------------------------------------------------------------
    async def authenticate(self) -> None:
        try:
            model = await self.hub_auth.get_user(self, sync=False)
        except web.HTTPError as error:
            if error.status_code >= 500:  # the Hub is down and this token is not cached
                raise web.HTTPError(503, "JupyterHub does not answer, so this login cannot be checked now; retry shortly") from None
            raise
        if model is not None:
            try:
                model = self.check_hub_user(model)
            except UserNotAllowed:
                kind, name = model.get("kind", "user"), model.get("name")
                raise web.HTTPError(403, f"{kind} {name} may not use MLflow: its Hub token lacks the scope {next(iter(self.hub_scopes))} (docs/team.md)") from None
        self._current_user = model
        if model is None:
            if self._xsrf_refusal is not None:
                raise web.HTTPError(403, self._xsrf_refusal)
            if self._api_client():
                raise web.HTTPError(401, self._no_login())
            self.redirect(self.get_login_url())  # a browser: the Hub's login, then back here
            return
        if model.get("kind", "user") == "user" and model["name"].startswith(RESERVED_USER_PREFIX):
            raise web.HTTPError(403, f"the Hub user name {model['name']!r} is reserved by mlproxy")
        if unquote(self.request.path).startswith(self.settings_.service_prefix.rstrip("/") + ASSISTANT):  # as MLflow routes it
            raise web.HTTPError(
                403,
                "MLflow's Assistant runs an agent on the server with the service's account; in team mode it is not "
                "served (docs/SECURITY.md)",
            )
        self._token = self.hub_auth.get_token(self, in_cookie=False) if getattr(self, "_token_authenticated", False) else None

    def _api_client(self) -> bool:
        """A program, not a person: an MLflow API path, or a request that does not accept HTML."""
        path = self.request.path.removeprefix(self.settings_.service_prefix.rstrip("/"))
        return path.startswith(("/api/", "/ajax-api/")) or "text/html" not in self.request.headers.get("Accept", "")

    def _no_login(self) -> str:
        presented = scrub.AUTH_SCHEME.match(self.request.headers.get("Authorization", ""))
        what = "the token was refused" if presented else "no login"
        return (
            f"{what}: this MLflow is behind JupyterHub's login; set MLFLOW_TRACKING_TOKEN to your JupyterHub API "
            f"token ($JUPYTERHUB_API_TOKEN in your Hub server; elsewhere make one at {self.settings_.team.public_url}/hub/token)"
        )

    def check_xsrf_cookie(self) -> None:
        """HubOAuth asks this before it accepts a login cookie: MLflow's UI sends no `_xsrf`, so
        the exact-Origin rule stands in for it (never nothing)."""
        headers = self.request.headers
        self._xsrf_refusal = self._origin_refusal(headers.get("Origin"), headers.get("Referer"), cookie_authenticated=True)
        if self._xsrf_refusal is not None:
            raise web.HTTPError(403, self._xsrf_refusal)

    def get_current_user(self):
        return getattr(self, "_current_user", None)

    @property
    def secret(self) -> str | None:
        return self._token

    @property
    def cookie_authenticated(self) -> bool:
        return not getattr(self, "_token_authenticated", False)

    @property
    def front_scheme(self) -> str:
        """The scheme users reach the Hub with (TLS ends at its proxy, not here)."""
        return urlsplit(self.settings_.team.public_url).scheme

    # --- the request MLflow gets ---------------------------------------------------------------
    @property
    def mlflow_user(self) -> str:
        """The name MLflow knows the caller by: the Hub user's own name; a Hub service's, prefixed
        (never one of mlproxy's own names: mlproxy:agent, the bootstrap admin)."""
        model = self.current_user
        return model["name"] if model.get("kind", "user") == "user" else f"{SERVICE_USER_PREFIX}{model['name']}"

    async def forward(self) -> None:
        prefix = self.settings_.service_prefix.rstrip("/")
        raw = self.request.uri.removeprefix(prefix)  # as sent: no decoding and quoting again
        target = self.mlflow_target(raw if raw.startswith("/") else "/" + raw)
        headers = self.request.headers.copy()
        connection = {token.strip() for token in headers.get("Connection", "").split(",") if token.strip()}
        for name in {*HOP_HEADERS, *connection, *(name for name in headers if _not_forwarded(name))}:
            headers.pop(name, None)
        headers = self.mlflow_headers(headers, f"127.0.0.1:{self.settings_.mlflow.port}", own_cookie=self.hub_auth.cookie_name)
        admin = self.settings_.team.admin_group in (self.current_user.get("groups") or [])
        headers.update(caller.headers(self.mlflow_user, admin, self.proof_secret))
        request = httpclient.HTTPRequest(f"http://127.0.0.1:{self.settings_.mlflow.port}{target}", method=self.request.method, headers=headers)
        # Connections are kept per user: not even a desynchronised one could cross users.
        await self.relay_to_mlflow(self.tcp_client, request, pool_key=(str(self.settings_.mlflow_socket), self.mlflow_user))

    def rewrite_location(self, location: str) -> str:
        """MLflow's own paths (/static-files/...) under the service's route."""
        if location.startswith("/") and not location.startswith("//"):
            return self.settings_.service_prefix.rstrip("/") + location
        return location


def _not_forwarded(name: str) -> bool:
    """Request headers the service never passes on: the ones that name a caller (only the service
    says who calls), any spelled with an underscore (servers fold X_MLproxy_User into
    X-MLproxy-User: Starlette joins them, werkzeug reads both as HTTP_X_MLPROXY_USER; nginx drops
    such headers by default for the same reason), and the proxy headers a client could forge."""
    lowered = name.lower()
    return "_" in name or lowered in CALLER_HEADERS or lowered == "forwarded" or lowered.startswith("x-forwarded-")


CALLER_HEADERS = {name.lower() for name in caller.HEADERS}


class AliveHandler(web.RequestHandler):
    """The agent's liveness probe: the service answers, whatever MLflow and the Hub do."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain")
        self.finish("OK")


class ReadyHandler(web.RequestHandler):
    """The agent's readiness probe: the service reaches MLflow on its socket. Whether the Hub
    answers is the route's probe's business: a Hub down must not get the service restarted."""

    def initialize(self, settings: Settings) -> None:
        self.settings_ = settings

    async def get(self) -> None:
        settings = self.settings_
        try:
            status, _ = await asyncio.to_thread(local_http.fetch, f"{settings.mlflow_url}{MLFLOW_LIVENESS}", 5, settings.mlflow_socket)
        except OSError as error:
            status, reason = 503, f"MLflow: {error}"
        else:
            reason = f"MLflow answered {status}"
        self.set_header("Content-Type", "text/plain")
        self.set_status(200 if status == 200 else 503)
        self.finish("OK" if status == 200 else reason)


# --- users, synced from the Hub -------------------------------------------------------------------
# The Hub's API, never through an http_proxy of the environment: the request carries our token.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

def hub_users(settings: Settings, token: str) -> list[dict]:
    """Every Hub user with their groups (GET /users, paginated)."""
    users, offset = [], 0
    while True:
        url = f"{settings.team.hub_api_url}/users?offset={offset}&limit=200"
        request = urllib.request.Request(url, headers={"Authorization": f"token {token}", "Accept": "application/jupyterhub-pagination+json"})
        with DIRECT.open(request, timeout=10) as response:
            page = json.load(response)
        items = page["items"] if isinstance(page, dict) else page
        users += items
        following = page.get("_pagination", {}).get("next") if isinstance(page, dict) else None
        if not following:
            return users
        offset = following["offset"]


def introduce(settings: Settings, name: str, admin: bool, secret: str) -> bool:
    """One request to MLflow as this user: its auth app creates or updates them (hub/identity.py)."""
    headers = {**caller.headers(name, admin, secret), "Host": f"127.0.0.1:{settings.mlflow.port}"}
    status, _ = local_http.fetch(f"{settings.mlflow_url}/version", 10, settings.mlflow_socket, headers=headers)
    return status == 200


async def sync_users(settings: Settings, token: str, secret: str, known: dict[str, bool]) -> None:
    """Introduce every Hub user MLflow does not know yet (or whose admin flag changed)."""
    try:
        users = await asyncio.to_thread(hub_users, settings, token)
    except (OSError, ValueError, KeyError) as error:
        log.warning("cannot list the Hub's users (%s); retrying in %.0f s", error, settings.team.user_sync_period)
        return
    for user in users:
        name, admin = user["name"], settings.team.admin_group in (user.get("groups") or [])
        if name.startswith(RESERVED_USER_PREFIX) or known.get(name) == admin:
            continue
        try:
            if await asyncio.to_thread(introduce, settings, name, admin, secret):
                known[name] = admin
        except OSError as error:  # MLflow restarting: next round
            log.warning("cannot introduce %s to MLflow (%s)", name, error)
            return
        except Exception as error:  # this user only (a name MLflow refuses, say): the others go on
            log.warning("cannot introduce %r to MLflow: %s: %s", name, type(error).__name__, error)


def make_app(settings: Settings, token: str, proof_secret: str) -> web.Application:
    team = settings.team
    prefix = settings.service_prefix
    # The one HubOAuth of this process: HubOAuthCallbackHandler looks it up as the class's instance.
    hub_auth = HubOAuth.instance(
        api_token=token,
        api_url=team.hub_api_url,
        oauth_client_id=f"service-{team.service_name}",
        base_url=prefix,
        oauth_redirect_uri=f"{prefix}oauth_callback",
        access_scopes={f"access:services!service={team.service_name}"},
    )
    tcp_client = TCPClient(resolver=UnixSocketResolver(path=str(settings.mlflow_socket)))
    return web.Application(
        [
            (f"{prefix}oauth_callback", HubOAuthCallbackHandler, {}),
            (f"{prefix.rstrip('/')}{SERVICE_LIVENESS}", AliveHandler),
            (f"{prefix.rstrip('/')}{SERVICE_READINESS}", ReadyHandler, {"settings": settings}),
            (prefix.rstrip("/"), web.RedirectHandler, {"url": prefix}),
            (f"{prefix}(.*)", MLflowServiceHandler, {"settings": settings, "hub_auth": hub_auth, "tcp_client": tcp_client, "proof_secret": proof_secret}),
        ],
        cookie_secret=credentials.read_token(settings.service_cookie_secret),
    )


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s %(name)s] %(message)s", stream=sys.stdout)
    settings = read_resolved(Path(os.environ[RESOLVED_ENV]))
    token = credentials.read_token(settings.team.service_token_file)
    scrub.scrub_logs([logging.getLogger()], token)  # the service's own token never reaches its log
    secret = credentials.read_token(settings.mlflow_auth_secret)
    app = make_app(settings, token, secret)
    server = httpserver.HTTPServer(app, max_body_size=sys.maxsize)
    server.listen(settings.team.service_port, address="127.0.0.1")
    log.info("MLflow served as %s, behind the Hub at %s", settings.team_url, settings.team.hub_api_url)
    loop = ioloop.IOLoop.current()
    known: dict[str, bool] = {}
    ioloop.PeriodicCallback(lambda: asyncio.ensure_future(sync_users(settings, token, secret, known)), settings.team.user_sync_period * 1000).start()
    loop.add_callback(lambda: asyncio.ensure_future(sync_users(settings, token, secret, known)))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: loop.add_callback_from_signal(loop.stop))
    loop.start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
