"""Jupyter's credentials never reach MLflow: the pure parts of the proxy's scrubbing."""

from __future__ import annotations

import pytest
from tornado.httputil import HTTPHeaders

from mlproxy_supervisor.jupyter import scrub

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
        f"{OWN}=2|abc; _xsrf=2|def; username-127-0-0-1-9999=2|ghi; theme=dark",
        "jupyterhub-session-id=xyz; USERNAME-other=1; mlflow-pref=1",
    ])
    scrub.strip_headers(forwarded, TOKEN, OWN)
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
