"""Jupyter's credentials, removed from what the proxy forwards to MLflow and from what it answers.

Jupyter accepts its token in the query (under any percent-encoding of the key `token`, since
tornado decodes keys), in `Authorization: token|bearer X`, and as a login cookie; the browser also
sends the `?token=` URL back in `Referer` and attaches the cookies of every other Jupyter server on
the same host. None of these are MLflow's business, and MLflow writes what it receives to its log.
"""

from __future__ import annotations

import re
from http.cookies import CookieError, SimpleCookie
from urllib.parse import unquote_plus, urlsplit, urlunsplit

TOKEN_KEY = "token"
JUPYTER_AUTH_SCHEME = re.compile(r"^\s*(token|bearer)\b", re.IGNORECASE)
# Jupyter's login cookie is username-<host>-<port> (any server on the host), JupyterHub's are
# jupyterhub-*, and _xsrf is Jupyter's XSRF cookie.
JUPYTER_COOKIE = re.compile(r"^(username-|jupyterhub-|_xsrf$)", re.IGNORECASE)


def jupyter_token(handler) -> str | None:
    """The token this Jupyter server accepts, if it has one (a password-only server has none)."""
    return getattr(handler.identity_provider, "token", None) or None


def _decoded(text: str) -> str:
    """Percent-decoded until it no longer changes (a few rounds at most)."""
    for _ in range(5):
        decoded = unquote_plus(text)
        if decoded == text:
            break
        text = decoded
    return text


def is_token_key(key: str) -> bool:
    """A query key Jupyter reads the token from (tornado hands over keys already decoded once)."""
    return _decoded(key).strip() == TOKEN_KEY


def strip_query(query: str, token: str | None) -> str:
    """The raw query without any `token` key (however encoded) and without any value holding the
    token; every other parameter is kept byte for byte."""
    kept = []
    for piece in query.split("&"):
        key, _, value = piece.partition("=")
        if is_token_key(key):
            continue
        if token and token in _decoded(value):
            continue
        kept.append(piece)
    return "&".join(kept)


def strip_url(url: str, token: str | None) -> str:
    """A URL (a Referer) with its query stripped as above."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    return urlunsplit(parts._replace(query=strip_query(parts.query, token)))


def strip_cookies(header: str, own_cookie: str) -> str:
    """The Cookie header without Jupyter's cookies; what cannot be parsed is dropped too."""
    cookies = SimpleCookie()
    try:
        cookies.load(header)
    except CookieError:
        return ""
    return "; ".join(
        f"{name}={morsel.coded_value}"
        for name, morsel in cookies.items()
        if name != own_cookie and not JUPYTER_COOKIE.match(name)
    )


def strip_headers(headers, token: str | None, own_cookie: str) -> None:
    """Remove Jupyter's credentials from request headers (a tornado HTTPHeaders), in place."""
    if JUPYTER_AUTH_SCHEME.match(headers.get("Authorization", "")):
        del headers["Authorization"]
    if "Cookie" in headers:
        kept = strip_cookies("; ".join(headers.get_list("Cookie")), own_cookie)
        del headers["Cookie"]
        if kept:
            headers["Cookie"] = kept
    if "Referer" in headers:
        referer = strip_url(headers["Referer"], token)
        del headers["Referer"]
        if referer:
            headers["Referer"] = referer
    if token:
        # Anywhere else (a custom header, an odd scheme), the token itself never goes on.
        for name in {name for name, value in headers.get_all() if token in value}:
            del headers[name]
