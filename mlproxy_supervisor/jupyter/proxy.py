"""The handler that serves MLflow under Jupyter: jupyter-server-proxy's, plus an origin check.

jupyter-server-proxy skips Jupyter's XSRF check for proxied requests ("defer to the proxied app"),
and MLflow trusts every localhost Origin on any port. A page on another port of the same host is
the same *site*, so the browser attaches the Jupyter login cookie to its requests. This handler
therefore refuses any request whose Origin is not Jupyter's own, and only then presents the
request to MLflow as a loopback one (Host and Origin), which MLflow's Host and CORS checks accept.
Reaching Jupyter as myvm.example.com:8888 thus works, and a cross-origin write is still refused.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from jupyter_server.base.handlers import JupyterHandler
from jupyter_server_proxy.handlers import NamedLocalProxyHandler
from tornado import httpclient, web

from . import scrub

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# MLflow's artifact downloads: the UI's preview/download links and the artifact REST API.
ARTIFACT_DOWNLOAD = re.compile(r"^/(get-artifact|model-versions/get-artifact|(ajax-)?api/2\.0/mlflow-artifacts/artifacts/.+)")
DOWNLOAD_LIMIT = 1 << 40  # bytes; streamed, so this bounds nothing in memory


DEFAULT_PORTS = {"http": 80, "https": 443}


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


class MLflowProxyHandler(NamedLocalProxyHandler):
    """Proxy to MLflow on loopback, for the /mlflow/ and /proxy/<port>/ routes."""

    def initialize(self, port: int, proxy_base: str = "") -> None:
        self.port = port
        self.proxy_base = proxy_base  # "" -> redirects are rewritten under /proxy/<port>/

    async def prepare(self, *args, **kwargs) -> None:
        await super().prepare(*args, **kwargs)  # authenticates; redirects or 403s if not
        if not self._finished:
            self._refuse_foreign_origin()

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

    async def _proxy_buffered(self, host, port, proxied_path, body, client):
        """Artifact downloads are streamed chunk by chunk, not buffered: jupyter-server-proxy holds
        whole responses in memory and its client gives up over 100 MB (its issue #281)."""
        if self.request.method == "GET" and ARTIFACT_DOWNLOAD.match(proxied_path):
            streaming_client = httpclient.AsyncHTTPClient(force_instance=True, max_body_size=DOWNLOAD_LIMIT)
            try:
                return await self._proxy_progressive(host, port, proxied_path, body, streaming_client)
            finally:
                streaming_client.close()
        return await super()._proxy_buffered(host, port, proxied_path, body, client)

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
        uri = super().get_client_uri(protocol, host, port, proxied_path)
        # Jupyter reads `token` from the decoded query, so %74oken= logs in too: strip every spelling.
        raw_query = self.request.query
        if not raw_query or not uri.endswith(f"?{raw_query}"):
            return uri
        path = uri[: -len(raw_query) - 1]  # jupyter-server-proxy appends the request's raw query
        query = scrub.strip_query(raw_query, scrub.jupyter_token(self))
        return f"{path}?{query}" if query else path
