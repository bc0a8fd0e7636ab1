"""Secrets masked for display (`mlproxy config show`): a URI's password and secret-looking query
parameters. Never raises: a malformed URI is shown masked rather than crashing the command."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# Query parameters that carry credentials in SQLAlchemy, libpq and object-store URIs.
SECRET_KEY = re.compile(r"pass|secret|token|key|credential|auth|sig", re.IGNORECASE)


def _mask_query(query: str) -> str:
    pieces = []
    for piece in query.split("&"):
        key, equals, value = piece.partition("=")
        pieces.append(f"{key}={MASK}" if equals and value and SECRET_KEY.search(key) else piece)
    return "&".join(pieces)


def redact_uri(uri: str | None) -> str | None:
    """postgresql://user:***@host:5432/db?sslmode=require&password=***"""
    if not uri or "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:  # e.g. an unbalanced [ in the host: show nothing of it
        return f"{uri.split('://', 1)[0]}://{MASK}"
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:{MASK}@{hostport}"
    query = _mask_query(parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return uri  # as written (urlunsplit would fold sqlite://// to sqlite://)
    return urlunsplit(parts._replace(netloc=netloc, query=query))
