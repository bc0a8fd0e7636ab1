"""Which requests may act with the user's login: the exact-Origin rule, shared by both front doors.

A page on another port of the same host is the same *site*, so the browser attaches the login
cookie (Jupyter's, or the Hub's) to its requests; MLflow trusts every localhost Origin on any port,
and jupyter-server-proxy and HubOAuth's `_xsrf` check do not fit MLflow's UI. So the front door
refuses any request whose Origin is not exactly its own, and a cookie-authenticated write with
neither Origin nor a same-origin Referer.
"""

from __future__ import annotations

from urllib.parse import urlsplit

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
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


def referer_origin(referer: str | None) -> str | None:
    """The origin (scheme://host:port) of the page a Referer names."""
    try:
        parts = urlsplit(referer or "")
    except ValueError:
        return None
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def refusal(method: str, origin: str | None, referer: str | None, host: str, scheme: str, cookie_authenticated: bool,
            origin_allowed=lambda origin: False) -> str | None:  # fmt: skip
    """Why a request may not go on (None: it may). `origin_allowed` names origins the operator
    allowed explicitly (Jupyter's allow_origin); never '*'."""
    if origin is not None:
        if same_origin(origin, host, scheme) or origin_allowed(origin):
            return None
        return f"cross-origin request from {origin} refused"
    # Browsers send Origin with every write; a cookie-authenticated write without one is only
    # accepted with a same-origin Referer.
    if method in UNSAFE_METHODS and cookie_authenticated:
        page = referer_origin(referer)
        if page is None or not (same_origin(page, host, scheme) or origin_allowed(page)):
            return "write without Origin or same-origin Referer refused"
    return None
