"""Which /proxy/ paths reach MLflow's port, parsed the way jupyter-server-proxy parses them.

Its generic handlers match the raw path against /proxy/(\\d+)(/.*|), /proxy/([^/:@]+):(\\d+)(/.*|)
and their /proxy/absolute/ twins, then tornado percent-decodes each group. So /proxy/05001/,
/proxy/localhost:05001/, /proxy/%6cocalhost:5001/ and /proxy/127.0.0.%31:5001/ all reach port
5001. This matcher sees exactly those paths, so the rule that uses it owns every spelling: the
local ones go through MLflowProxyHandler, the rest are refused.
"""

from __future__ import annotations

import re

from tornado.escape import url_unescape
from tornado.routing import Matcher

# jupyter-server-proxy's patterns (handlers.setup_handlers), below Jupyter's base_url.
_GENERIC = re.compile(r"proxy/(?P<absolute>absolute/)?(?:(?P<host>[^/:@]+):)?(?P<port>\d+)(?P<path>/.*|)$")
LOCAL_NAMES = ("localhost", "127.0.0.1")


def _decoded(group: str) -> str:
    return url_unescape(group, encoding=None, plus=False).decode("utf-8", errors="replace")


def mlflow_target(path: str, base_url: str, port: int) -> tuple[str, bytes] | None:
    """("serve", proxied path) for a local spelling of MLflow's port, ("add-slash", b"") for one with
    nothing after the port, ("refuse", b"") for a spelling we do not serve (an absolute route,
    another host name on that port), None for any other path."""
    if not path.startswith(base_url):
        return None
    match = _GENERIC.match(path, len(base_url))
    if match is None or (match["port"].lstrip("0") or "0") != str(port):  # leading zeros: same port
        return None
    host = "localhost" if match["host"] is None else _decoded(match["host"])
    if match["absolute"] or host not in LOCAL_NAMES:
        # /proxy/absolute/ would send MLflow its own prefix; other names are refused rather
        # than guessed at (127.1, 0x7f.1 and localhost. resolve to the same loopback).
        return ("refuse", b"")
    if not match["path"]:
        return ("add-slash", b"")
    return ("serve", url_unescape(match["path"], encoding=None, plus=False))


class MLflowPortMatches(Matcher):
    """Matches the paths for which mlflow_target says `kind`; passes the proxied path on."""

    def __init__(self, base_url: str, port: int, kind: str) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.port = port
        self.kind = kind

    def match(self, request):
        target = mlflow_target(request.path, self.base_url, self.port)
        if target is None or target[0] != self.kind:
            return None
        return {"path_args": [target[1]] if self.kind == "serve" else [], "path_kwargs": {}}
