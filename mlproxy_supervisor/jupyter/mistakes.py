"""An MLflow client's likely mistakes, answered with what is wrong and the fix, as MLflow's client
shows an answer whole: JSON with `error_code` and `message` (relay/answers.py).

- The printed URL pasted as the tracking URI (`.../mlflow/?token=T`): MLflow appends its API path
  to the URI, after the query, so the request reaches /mlflow/ with the path inside `token`, and
  Jupyter's login reads that (wrong) token before the right one in MLFLOW_TRACKING_TOKEN.
  Recognized by a plain look at the raw query, before the login.
- MLflow's API called at Jupyter's root (the tracking URI without /mlflow): Jupyter would answer
  with its 404 page. Nothing is read from the request but its path.
- /proxy/<port>/ with a port where nothing listens: jupyter-server-proxy would answer 599 with
  "Connection refused". The request is proxied as jupyter-server-proxy proxies it (after its
  login); only a failed connection is answered with the fix.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from jupyter_server.utils import url_path_join
from jupyter_server_proxy.handlers import LocalProxyHandler
from tornado import web

from ..relay import answers, scrub

# MLflow's REST paths: /api/2.0/mlflow/..., /api/3.0/mlflow/..., /api/2.0/mlflow-artifacts/...,
# and the UI's /ajax-api/ twins.
MLFLOW_API = r"/(?:ajax-)?api/[23]\.0/mlflow(?:-artifacts)?/"
NOT_FOUND_CODE = "ENDPOINT_NOT_FOUND"  # one of MLflow's error codes, so its client names it


def tracking_uri(handler: web.RequestHandler) -> str:
    """The tracking URI this Jupyter serves MLflow at, as the client reached Jupyter."""
    base = handler.settings.get("base_url", "/")
    return f"{handler.request.protocol}://{handler.request.host}{base}mlflow"


def token_in_tracking_uri(handler: web.RequestHandler) -> str | None:
    """Why the request is a tracking URI with `?token=` in it (None: it is not)."""
    for key, value in parse_qsl(handler.request.query, keep_blank_values=True):
        if scrub.is_token_key(key) and re.search(MLFLOW_API, value):
            return (
                "the tracking URI holds a query (?token=...), and MLflow appends its API path after the "
                "query, so Jupyter read a wrong token from it. Set MLFLOW_TRACKING_URI="
                f"{tracking_uri(handler)} (no query) and the token in MLFLOW_TRACKING_TOKEN"
            )
    return None


class MLflowAtRootHandler(web.RequestHandler):
    """MLflow's API at Jupyter's root: the tracking URI lacks /mlflow."""

    def initialize(self, team_url: str | None = None) -> None:
        self.team_url = team_url

    def check_xsrf_cookie(self) -> None:
        """Nothing is done for this request but the answer below: no login or XSRF to check."""

    def prepare(self) -> None:
        uri = self.team_url.rstrip("/") if self.team_url else tracking_uri(self)
        message = (
            f"{self.request.path} is MLflow's API at Jupyter's root, where Jupyter serves no MLflow: the "
            f"tracking URI lacks /mlflow. Set MLFLOW_TRACKING_URI={uri}"
        )
        answers.write(self, 404, message, error_code=NOT_FOUND_CODE)


class OtherPortHandler(LocalProxyHandler):
    """/proxy/<port>/<MLflow's API> for a port other than MLflow's: proxied as jupyter-server-proxy
    does, and when nothing answers there, the fix."""

    def initialize(self, mlflow_port: int) -> None:
        self.mlflow_port = mlflow_port

    async def proxy(self, port, proxied_path):
        try:
            return await super().proxy(port, proxied_path)
        except (OSError, web.HTTPError) as error:
            if isinstance(error, web.HTTPError) and error.status_code not in (500, 599):  # 599: no connection
                raise
            message = (
                f"nothing answers on port {port}: this MLflow is served at /proxy/{self.mlflow_port}/ (and /mlflow/). "
                f"Set MLFLOW_TRACKING_URI={tracking_uri(self)}"
            )
            raise web.HTTPError(404, message) from None

    def write_error(self, status_code: int, **kwargs) -> None:
        error = kwargs.get("exc_info", (None, None))[1]
        if status_code == 404 and isinstance(error, web.HTTPError) and error.log_message:
            answers.write(self, 404, error.log_message, error_code=NOT_FOUND_CODE)
        else:
            super().write_error(status_code, **kwargs)


def routes(base_url: str, mlflow_port: int, team_url: str | None = None) -> list[tuple]:
    """The routes for the mistakes above, after MLflow's own (MLflow's port is theirs). In a Hub
    user's server (`team_url`), only MLflow's API at the root, pointed at the team's MLflow."""
    root = (url_path_join(base_url, rf"{MLFLOW_API.lstrip('/')}.*"), MLflowAtRootHandler, {"team_url": team_url})
    if team_url:
        return [root]
    return [(url_path_join(base_url, rf"proxy/(\d+)({MLFLOW_API}.*)"), OtherPortHandler, {"mlflow_port": mlflow_port}), root]
