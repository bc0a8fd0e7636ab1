"""The front door's credentials (Jupyter's or JupyterHub's), removed from what the relay forwards
to MLflow and from every log line.

Jupyter and JupyterHub accept a token in the query (under any percent-encoding of the key `token`,
since tornado decodes keys), in `Authorization: token|bearer X`, and as login cookies; the browser
also sends the `?token=` URL back in `Referer` and attaches the cookies of every other Jupyter
server on the same host. None of these are MLflow's business, and MLflow writes what it receives
to its log.

A secret is looked for in every form a client can give it: as is, percent-encoded (any character,
any number of times: `%2561` is `a`), and inside base64 (a `Basic` header, say).
"""

from __future__ import annotations

import base64
import functools
import logging
import re
from urllib.parse import unquote_plus, urlsplit, urlunsplit

TOKEN_KEY = "token"
MASK = "[secret]"
AUTH_SCHEME = re.compile(r"^\s*(token|bearer)\b", re.IGNORECASE)
# Jupyter's login cookie is username-<host>-<port> (any server on the host), JupyterHub's are
# jupyterhub-* and service-* (with the __Host- prefix when the Hub sets it), and _xsrf is the
# XSRF cookie of both.
LOGIN_COOKIE = re.compile(r"^(__host-|__secure-)?(username-|jupyterhub-|service-|_xsrf$)", re.IGNORECASE)
# A cookie every parser reads the same way: an RFC 6265 name (a token) and cookie-octets, maybe
# quoted. Anything else (a comma, a space, a backslash) is read differently by tornado, Python's
# SimpleCookie and MLflow's Starlette, so it is not forwarded.
PLAIN_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
PLAIN_COOKIE_VALUE = re.compile(r'"?[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"?')


class SecretPattern:
    """Finds one secret in text however a client encoded it: as is, percent-encoded (each
    character, any number of times, hex digits in either case) or inside base64 (standard or
    URL-safe, at any alignment)."""

    def __init__(self, secret: str):
        characters = []
        for character in secret:
            encoded = "".join(rf"%(?:25)*{byte:02x}" for byte in character.encode())
            characters.append(f"(?:{re.escape(character)}|{encoded})")
        self._percent = re.compile("".join(characters), re.IGNORECASE)
        self._base64 = _base64_cores(secret.encode())

    def search(self, text: str) -> bool:
        return bool(self._percent.search(text)) or any(core in text for core in self._base64)

    def mask(self, text: str) -> str:
        text = self._percent.sub(MASK, text)
        for core in self._base64:
            text = text.replace(core, MASK)
        return text


def _base64_cores(secret: bytes) -> tuple[str, ...]:
    """The part of base64(prefix + secret + suffix) that depends on the secret alone, for each of
    the three alignments a prefix can give it."""
    if len(secret) < 12:
        return ()  # too short for its base64 to be told from other text
    cores = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + secret).decode()
        core = encoded[-(-offset // 3) * 4 : (offset + len(secret)) // 3 * 4]
        cores.update({core, core.translate(str.maketrans("+/", "-_"))})
    return tuple(cores)


@functools.lru_cache(maxsize=64)
def secret_pattern(secret: str) -> SecretPattern:
    return SecretPattern(secret)


def holds_secret(text: str, secret: str | None) -> bool:
    return bool(secret) and secret_pattern(secret).search(text)


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
    """The raw query without any `token` key (however encoded) and without any parameter holding
    the token, in its key or its value, in any encoding (a bare `?<token>` too); every other
    parameter is kept byte for byte."""
    kept = []
    for piece in query.split("&"):
        key, _, _value = piece.partition("=")
        if is_token_key(key) or holds_secret(piece, token):
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


def strip_cookies(header: str, own_cookie: str, token: str | None = None) -> str:
    """The Cookie header without the login cookies (`own_cookie` and LOGIN_COOKIE). `header` is what tornado reads the login cookie
    from (several Cookie headers joined by commas), split as tornado's parse_cookie splits it: at
    each `;`, the name before the first `=`. Only plain name=value pairs that are no login cookie
    (and hold no token) go on, so MLflow cannot read a cookie tornado did not see."""
    kept = []
    for chunk in header.split(";"):
        name, equals, value = chunk.partition("=")
        name, value = name.strip(), value.strip()
        if not (equals and PLAIN_COOKIE_NAME.fullmatch(name) and PLAIN_COOKIE_VALUE.fullmatch(value)):
            continue
        if name == own_cookie or LOGIN_COOKIE.match(name) or holds_secret(chunk, token):
            continue
        kept.append(f"{name}={value}")
    return "; ".join(kept)


def strip_headers(headers, token: str | None, own_cookie: str) -> None:
    """Remove the front door's credentials from request headers (a tornado HTTPHeaders), in place."""
    if AUTH_SCHEME.match(headers.get("Authorization", "")):
        del headers["Authorization"]
    if "Cookie" in headers:
        kept = strip_cookies(headers["Cookie"], own_cookie, token)  # joined as tornado joins them
        del headers["Cookie"]
        if kept:
            headers["Cookie"] = kept
    if "Referer" in headers:
        referer = strip_url(headers["Referer"], token)
        del headers["Referer"]
        if referer:
            headers["Referer"] = referer
    # Anywhere else (a custom header, an odd scheme, base64 in Basic), the token never goes on.
    for name in {name for name, value in headers.get_all() if holds_secret(value, token)}:
        del headers[name]


class LogScrubber(logging.Filter):
    """Masks a secret in every record a log handler emits, message and traceback, in any of the
    forms SecretPattern finds. Installed on the front door's log handlers, it covers what no handler
    of ours writes: tornado's request summaries, Jupyter's access log and its header dumps."""

    def __init__(self, secret: str):
        super().__init__()
        self.pattern = secret_pattern(secret)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: show it unformatted, masked
            message = f"{record.msg} {record.args}"
        if self.pattern.search(message):
            record.msg, record.args = self.pattern.mask(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and self.pattern.search(record.exc_text):
            record.exc_text = self.pattern.mask(record.exc_text)
        return True


def scrub_logs(loggers: list[logging.Logger], secret: str) -> None:
    """Mask `secret` in everything these loggers' handlers write (idempotent)."""
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(existing, LogScrubber) for existing in handler.filters):
                handler.addFilter(LogScrubber(secret))
