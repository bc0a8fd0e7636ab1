"""Jupyter-side part of mlproxy: the MLflow launcher entry and the proxy routes.

Two hooks, both loaded by any Jupyter server in this environment:
- ``mlflow_server_process`` is a ``jupyter_serverproxy_servers`` entry point: it gives the
  "MLflow" launcher tile (JupyterLab) and New-menu item (Notebook 7);
- the server extension registers ``MLflowProxyHandler`` for /mlflow/ and /proxy/<port>/ ahead of
  jupyter-server-proxy's generic handlers, so every route to MLflow gets the origin check. In a
  JupyterHub user's server of a team (hub.configure sets _MLPROXY_TEAM_URL), it registers
  redirects to the team's service instead, and never connects to MLflow itself.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from urllib.parse import quote, urlsplit

from jupyter_server.utils import url_path_join
from jupyter_server_proxy.handlers import AddSlashHandler
from tornado import web
from tornado.routing import HostMatches, Rule

from ..config import ConfigError, Settings
from ..programs import TEAM_PORT_ENV, TEAM_URL_ENV
from ..relay import scrub
from ..running import locate_stack
from . import mistakes
from .proxy import MLflowProxyHandler
from .routes import MLflowPortMatches

ICON = Path(__file__).with_name("mlflow.svg")
ROUTE_NAME = "mlflow"


@functools.cache  # read once per Jupyter server: the port, the limits and the launcher entry ask
def _stack_settings() -> Settings:
    """The running stack's resolved configuration: under `mlproxy up`, the file named by
    $MLPROXY_RESOLVED_CONFIG in Jupyter's environment. A Jupyter server started by hand in this
    environment finds the stack as the `mlproxy` command does."""
    return locate_stack()


def _mlflow_port() -> int:
    return urlsplit(_stack_settings().mlflow_url).port


def _mlflow_socket() -> str | None:
    """MLflow's unix socket (None: it listens on TCP, on _mlflow_port())."""
    path = _stack_settings().mlflow_socket
    return str(path) if path else None


def _proxy_options() -> dict:
    """Where MLflow listens, the MLflow handler's limits (streaming: see proxy.py), and the gate the
    stack's agent opens once MLflow is ready (none when no stack runs: nobody would open it)."""
    settings = _stack_settings()
    jupyter = settings.jupyter
    gate = settings.traffic_gate_file if settings.resolved_from is not None else None
    return {"unix_socket": _mlflow_socket(), "max_upload_size": jupyter.max_upload_size, "mlflow_timeout": jupyter.mlflow_timeout, "traffic_gate": gate}


def mlflow_server_process() -> dict:
    """jupyter-server-proxy server entry: proxy only (no command), prefix stripped. The port
    names the route; with a socket, jupyter-server-proxy connects there instead.

    jupyter-server-proxy calls this in every Jupyter server of the environment, as it loads. Its
    own handler for the entry has no origin check, so this is where mlproxy's routes go in front of
    it too, even when the data file that enables mlproxy's extension is missing (an editable
    install) or a user's own `jupyter lab` does not enable it."""
    _install_on_running_server()
    unix_socket = _mlflow_socket()
    return {
        "port": _mlflow_port(),
        **({"unix_socket": unix_socket} if unix_socket else {}),
        "absolute_url": False,  # MLflow serves from /; True would send /mlflow/... and get 404
        "new_browser_tab": True,
        # JupyterLab's launcher draws a card's icon from icon_url only in its kernel categories
        # ("Notebook", "Console"); in "Other" the card is blank. "Notebook" is also
        # jupyter-server-proxy's default, used by the other proxied apps.
        "launcher_entry": {"title": "MLflow", "icon_path": str(ICON), "category": "Notebook"},
    }


def mlflow_routes(base_url: str, port: int, options: dict | None = None) -> list[tuple]:
    # Every spelling of /proxy/<host>:<port>/ that jupyter-server-proxy would send to MLflow's
    # port (leading zeros, percent-encoding) is ours: served with the origin check, or refused.
    options = options or {}
    return [
        (url_path_join(base_url, ROUTE_NAME, "(.*)"), MLflowProxyHandler, {"port": port, "proxy_base": ROUTE_NAME, **options}),
        (url_path_join(base_url, ROUTE_NAME), AddSlashHandler),
        (MLflowPortMatches(base_url, port, "serve"), MLflowProxyHandler, {"port": port, **options}),
        # Without the slash MLflow's page loads but its relative asset URLs miss: redirect.
        (MLflowPortMatches(base_url, port, "add-slash"), AddSlashHandler),
        (MLflowPortMatches(base_url, port, "refuse"), web.ErrorHandler, {"status_code": 403}),
        *mistakes.routes(base_url, port),
    ]


class TeamRedirectHandler(web.RequestHandler):
    """/user/NAME/mlflow/PATH and /user/NAME/proxy/<port>/PATH -> the team's MLflow service, method
    and body kept (307), path and query as sent. Built from the Hub's public URL: the server's own
    address is not where users reach the Hub."""

    def initialize(self, team_url: str) -> None:
        self.team_url = team_url

    def _redirect(self, path: str = "") -> None:
        # tornado hands the path over decoded: quote it again, so a %0d%0a, %3F or %23 stays a
        # character of the path (never a header break, a query or a fragment of the Location).
        query = f"?{self.request.query}" if self.request.query else ""
        self.redirect(self.team_url + quote(path.lstrip("/"), safe="/:@!$&'()*+,;=-._~") + query, status=307)

    get = post = put = patch = delete = head = options = _redirect


def team_routes(base_url: str, port: int, team_url: str) -> list[tuple]:
    options = {"team_url": team_url if team_url.endswith("/") else team_url + "/"}
    return [
        (url_path_join(base_url, ROUTE_NAME, "(.*)"), TeamRedirectHandler, options),
        (url_path_join(base_url, ROUTE_NAME), TeamRedirectHandler, options),
        (MLflowPortMatches(base_url, port, "serve"), TeamRedirectHandler, options),
        (MLflowPortMatches(base_url, port, "add-slash"), TeamRedirectHandler, options),
        (MLflowPortMatches(base_url, port, "refuse"), web.ErrorHandler, {"status_code": 403}),
        *mistakes.routes(base_url, port, team_url),
    ]


def _jupyter_server_extension_points():
    return [{"module": "mlproxy_supervisor.jupyter"}]


def _install_on_running_server() -> None:
    """mlproxy's routes on the Jupyter server this process runs, if it runs one (ServerApp's
    instance, made before its extensions load)."""
    from jupyter_server.serverapp import ServerApp

    if ServerApp.initialized() and getattr(ServerApp.instance(), "web_app", None) is not None:
        install_routes(ServerApp.instance())


def _load_jupyter_server_extension(serverapp) -> None:
    install_routes(serverapp)


# Marks a Jupyter application whose routes are installed: the extension and the entry point both
# install them, in either order, once.
INSTALLED = "mlproxy_routes_installed"


def install_routes(serverapp) -> None:
    """Put mlproxy's routes first on this Jupyter server (once, however often called)."""
    web_app = serverapp.web_app
    if web_app.settings.get(INSTALLED):
        return
    web_app.settings[INSTALLED] = True
    token = getattr(serverapp.identity_provider, "token", None)
    if token:
        # Whatever writes to Jupyter's log (tornado's request summaries, Jupyter's access log and
        # header dumps, jupyter-server-proxy), the token is masked in it, in any encoding.
        scrub.scrub_logs([serverapp.log, logging.getLogger()], token)
    team_url = os.environ.get(TEAM_URL_ENV)
    try:
        port = int(os.environ.get(TEAM_PORT_ENV, 0)) or _mlflow_port()
        routes = team_routes(web_app.settings["base_url"], port, team_url) if team_url else mlflow_routes(web_app.settings["base_url"], port, _proxy_options())
    except ConfigError as error:
        serverapp.log.error("mlproxy: MLflow routes not registered: %s", error)
        return
    # Tornado tries host rules in order and jupyter-server-proxy adds its generic
    # /proxy/<port>/ handler (and the entry point's /mlflow/) as its own rule. Putting this
    # rule first makes the origin-checking handler win, whatever the extension load order.
    rule = web_app.default_router.process_rule(Rule(HostMatches(".*"), routes))
    web_app.default_router.rules.insert(0, rule)
    if team_url:
        serverapp.log.info("mlproxy: /%s/ and /proxy/%s/ redirect to the team's MLflow at %s", ROUTE_NAME, port, team_url)
    else:
        socket = _mlflow_socket()
        serverapp.log.info("mlproxy: MLflow on %s served at /%s/ and /proxy/%s/", socket or f"127.0.0.1:{port}", ROUTE_NAME, port)
