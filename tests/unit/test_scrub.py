"""Jupyter's credentials never reach MLflow: the pure parts of the proxy's scrubbing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tornado.httputil import HTTPHeaders

from mlproxy_supervisor.relay import scrub

TOKEN = "0123456789abcdef0123456789abcdef0123456789abcdef"
OWN = "username-127-0-0-1-8888"


def headers(**values) -> HTTPHeaders:
    result = HTTPHeaders()
    for name, value in values.items():
        for one in value if isinstance(value, list) else [value]:
            result.add(name.replace("_", "-"), one)
    return result


@pytest.mark.parametrize(
    "authorization",
    [f"token {TOKEN}", f"Token {TOKEN}", f"Bearer {TOKEN}", f"BEARER  {TOKEN}", "token wrong"],
)
def test_jupyter_authorization_is_removed(authorization):
    forwarded = headers(Authorization=authorization)
    scrub.strip_headers(forwarded, TOKEN, OWN)
    assert "Authorization" not in forwarded


def test_other_authorization_is_kept():
    forwarded = headers(Authorization="Basic dXNlcjpwdw==")
    scrub.strip_headers(forwarded, TOKEN, OWN)
    assert forwarded["Authorization"] == "Basic dXNlcjpwdw=="


def test_every_jupyter_cookie_is_removed_and_the_rest_kept():
    forwarded = headers(Cookie=[
        f"{OWN}=2|abc; _xsrf=2|def; username-127-0-0-1-9999=2|ghi; theme=dark; lang=en",
        "jupyterhub-session-id=xyz; USERNAME-other=1; __Host-jupyterhub-session-id=1; service-mlflow=2; mlflow-pref=1",
    ])
    scrub.strip_headers(forwarded, TOKEN, OWN)
    # tornado joins the two headers with a comma, so it reads "lang" as "en,jupyterhub-session-id=xyz":
    # a value no other parser reads the same way, so that pair is dropped too.
    assert forwarded.get_list("Cookie") == ["theme=dark; mlflow-pref=1"]


def test_only_jupyter_cookies_leave_no_cookie_header():
    forwarded = headers(Cookie=f"{OWN}=2|abc; _xsrf=x")
    scrub.strip_headers(forwarded, TOKEN, OWN)
    assert "Cookie" not in forwarded


def test_unparsable_cookie_header_is_dropped_not_forwarded():
    forwarded = headers(Cookie=f'{OWN}="unterminated; a=b')
    scrub.strip_headers(forwarded, TOKEN, OWN)
    assert OWN not in forwarded.get("Cookie", "")


@pytest.mark.parametrize(
    "referer",
    [
        f"http://127.0.0.1:8888/mlflow/?token={TOKEN}",
        f"http://127.0.0.1:8888/mlflow/?a=1&%74oken={TOKEN}",
        f"http://127.0.0.1:8888/mlflow/?tok%65n={TOKEN}&a=1",
        f"http://127.0.0.1:8888/mlflow/?x={TOKEN}",
    ],
)
def test_token_leaves_the_referer(referer):
    forwarded = headers(Referer=referer)
    scrub.strip_headers(forwarded, TOKEN, OWN)
    assert TOKEN not in forwarded.get("Referer", "")
    assert forwarded["Referer"].startswith("http://127.0.0.1:8888/mlflow/")


def test_token_anywhere_else_drops_the_header():
    forwarded = headers(X_Custom=f"prefix {TOKEN}", Accept="*/*")
    scrub.strip_headers(forwarded, TOKEN, OWN)
    assert "X-Custom" not in forwarded and forwarded["Accept"] == "*/*"


@pytest.mark.parametrize(
    ("query", "kept"),
    [
        (f"token={TOKEN}", ""),
        (f"%74oken={TOKEN}", ""),
        (f"tok%65n={TOKEN}&a=1", "a=1"),
        (f"%2574oken={TOKEN}", ""),
        ("TOKEN=x&a=%20b", "TOKEN=x&a=%20b"),  # Jupyter does not read TOKEN; kept byte for byte
        ("a=1&token=&b=2", "a=1&b=2"),
        (f"a={TOKEN}&b=2", "b=2"),
        ("path=a%2Fb&max_results=10", "path=a%2Fb&max_results=10"),
    ],
)
def test_query_without_the_token(query, kept):
    assert scrub.strip_query(query, TOKEN) == kept


# --- the token in any encoding -----------------------------------------------------------------
def _percent(text: str) -> str:
    return "".join(f"%{ord(c):02X}" for c in text)


@pytest.mark.parametrize(
    "spelled",
    [
        TOKEN,
        _percent(TOKEN),
        TOKEN[:10] + _percent(TOKEN[10:20]).lower() + TOKEN[20:],
        _percent(TOKEN).replace("%", "%25"),  # twice encoded
        TOKEN.upper(),
    ],
    ids=["plain", "percent", "partly-percent-lower", "double-percent", "upper"],
)
def test_the_token_is_found_and_masked_however_percent_encoded(spelled):
    text = f"GET /mlflow/x?a=1&{spelled} HTTP/1.1"
    assert scrub.holds_secret(text, TOKEN)
    masked = scrub.secret_pattern(TOKEN).mask(text)
    assert not scrub.holds_secret(masked, TOKEN) and masked.startswith("GET /mlflow/x?a=1&")


@pytest.mark.parametrize("prefix", ["", "u:", "us:", "user:"])
def test_the_token_is_found_inside_base64_at_any_alignment(prefix):
    import base64

    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        text = f"Authorization: Basic {encode((prefix + TOKEN + ':x').encode()).decode()}"
        assert scrub.holds_secret(text, TOKEN), (prefix, encode)
        assert not scrub.holds_secret(scrub.secret_pattern(TOKEN).mask(text), TOKEN)


def test_text_without_the_token_is_left_alone():
    text = "GET /mlflow/api/2.0/mlflow/experiments/search?max_results=1 0123456789abcdef"
    assert not scrub.holds_secret(text, TOKEN)
    assert scrub.secret_pattern(TOKEN).mask(text) == text
    assert not scrub.holds_secret(TOKEN, None)


@pytest.mark.parametrize(
    ("query", "kept"),
    [(TOKEN, ""), (f"a=1&{TOKEN}", "a=1"), (f"{TOKEN}=1&b=2", "b=2"), (f"x={_percent(TOKEN)}&b=2", "b=2")],
    ids=["bare", "bare-after", "as-key", "percent-value"],
)
def test_a_query_parameter_holding_the_token_anywhere_is_dropped(query, kept):
    assert scrub.strip_query(query, TOKEN) == kept


def test_the_log_scrubber_masks_messages_and_tracebacks():
    import logging

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    logger = logging.getLogger("test-scrub")
    logger.propagate = False
    handler = Keep()
    logger.addHandler(handler)
    scrub.scrub_logs([logger], TOKEN)
    scrub.scrub_logs([logger], TOKEN)  # idempotent: one filter
    assert len(handler.filters) == 1
    try:
        logger.warning("refused %s", f"/mlflow/?token={_percent(TOKEN)}")
        try:
            raise ValueError(f"bad value {TOKEN!r}")
        except ValueError:
            logger.exception("boom in %r", {"uri": f"/x?t={TOKEN}"})
    finally:
        logger.removeHandler(handler)
    assert len(records) == 2 and "ValueError" in records[1]
    assert not any(scrub.holds_secret(record, TOKEN) for record in records), records


# --- cookies, read as tornado reads them -----------------------------------------------------------
def _cookie_views(header: str) -> list[dict[str, str]]:
    """How tornado, Python's SimpleCookie and MLflow's Starlette each read a Cookie header."""
    from http.cookies import CookieError, SimpleCookie

    from starlette.requests import cookie_parser
    from tornado.httputil import parse_cookie

    views = [parse_cookie(header), cookie_parser(header)]
    simple = SimpleCookie()
    try:
        simple.load(header)
        views.append({name: morsel.value for name, morsel in simple.items()})
    except CookieError:
        pass
    return views


COOKIE_PIECES = [
    f"{OWN}=2|abc", f'{OWN}="2|abc"', f" {OWN} = 2|abc ", "_xsrf=x", "theme=dark", "a=b", 'q="x;y"', "c=d,e=f",
    f"a=b, {OWN}=stolen", f"{OWN}", "=v", "x=\\\"y", "__Host-jupyterhub-session-id=s", "service-mlflow=1", f"t={TOKEN}",
    "sp ace=1", "k=v v", "jupyterhub-user-alice=z", f'w="a; {OWN}=stolen; z="',
]


@given(st.lists(st.sampled_from(COOKIE_PIECES), min_size=1, max_size=6), st.lists(st.sampled_from([";", "; ", ",", ";;", " ; "]), min_size=6, max_size=6), st.integers(1, 2))
def test_no_parser_finds_a_jupyter_cookie_or_the_token_in_what_goes_on(pieces, separators, headers_count):
    joined = "".join(piece + separator for piece, separator in zip(pieces, separators, strict=False))
    values = [joined] if headers_count == 1 else [joined[: len(joined) // 2], joined[len(joined) // 2 :]]
    forwarded = headers(Cookie=[value.strip() for value in values if value.strip()])
    scrub.strip_headers(forwarded, TOKEN, OWN)
    kept = forwarded.get("Cookie", "")
    for view in _cookie_views(kept):
        for name, value in view.items():
            assert name != OWN and not scrub.LOGIN_COOKIE.match(name.strip()), (joined, kept, view)
            assert TOKEN not in value and "stolen" not in value, (joined, kept, view)
