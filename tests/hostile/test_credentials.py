"""Every route to MLflow x every credential that is not Jupyter's token: refused, nothing written.

And the controls: the real token, in every form Jupyter accepts, is served on every route (so
the refusals are about the credential), never reaches MLflow's log, and a foreign Origin is
refused even with it (so every spelling goes through our handler, not the generic one).
"""

from __future__ import annotations

import base64
import json

import pytest

from tests.support.hostile import ROUTE_NAMES, mlflow_routes, unique

pytestmark = pytest.mark.hostile

WRONG = "0" * 48


def bad_credentials(token: str, cookie_name: str) -> dict[str, tuple[str, dict]]:
    """name -> (query, headers): nothing here is a valid Jupyter login."""
    return {
        "none": ("", {}),
        "wrong-query": (f"token={WRONG}", {}),
        "empty-query": ("token=", {}),
        "truncated-query": (f"token={token[:-1]}", {}),
        "encoded-key-wrong": (f"%74oken={WRONG}", {}),
        "uppercase-key": (f"TOKEN={token}", {}),
        "wrong-token-header": ("", {"Authorization": f"token {WRONG}"}),
        "wrong-bearer": ("", {"Authorization": f"Bearer {WRONG}"}),
        "empty-authorization": ("", {"Authorization": "token "}),
        "basic-with-token": ("", {"Authorization": "Basic " + base64.b64encode(f"user:{token}".encode()).decode()}),
        "token-in-cookie": ("", {"Cookie": f"token={token}"}),
        "forged-login-cookie": ("", {"Cookie": f"{cookie_name}=2|1:0|10:1|4:user|0:|forged"}),
        "token-in-other-header": ("", {"X-Jupyter-Token": token}),
    }


BAD = list(bad_credentials("x" * 48, "c"))
GOOD = {
    "query": lambda token: (f"token={token}", {}),
    "encoded-key": lambda token: (f"%74oken={token}", {}),
    "encoded-key-2": lambda token: (f"tok%65n={token}", {}),
    "authorization-token": lambda token: ("", {"Authorization": f"token {token}"}),
    "authorization-bearer": lambda token: ("", {"Authorization": f"Bearer {token}"}),
}


def cookie_name(target) -> str:
    return f"username-127-0-0-1-{target.stack.jupyter_port}"


def path(route: str, endpoint: str, query: str) -> str:
    return f"{route}{endpoint}" + (f"?{query}" if query else "")


@pytest.mark.parametrize("credential", BAD)
@pytest.mark.parametrize("route", ROUTE_NAMES)
def test_write_without_a_valid_login_is_refused(target, route, credential):
    query, headers = bad_credentials(target.token, cookie_name(target))[credential]
    name = unique(f"nologin-{route}-{credential}")
    answer = target.raw(
        "POST", path(mlflow_routes(target.stack.mlflow_port)[route], "api/2.0/mlflow/experiments/create", query),
        {**headers, "Content-Type": "application/json"}, json.dumps({"name": name}).encode(),
    )
    assert answer.refused(), f"{answer.status}: {answer.body[:300]!r}"
    assert not target.experiment_exists(name)


@pytest.mark.parametrize("credential", ["none", "wrong-query", "encoded-key-wrong", "wrong-bearer", "forged-login-cookie", "uppercase-key"])
@pytest.mark.parametrize("route", ROUTE_NAMES)
def test_read_without_a_valid_login_is_refused(target, route, credential):
    query, headers = bad_credentials(target.token, cookie_name(target))[credential]
    answer = target.raw("GET", path(mlflow_routes(target.stack.mlflow_port)[route], "api/2.0/mlflow/experiments/search", query + "&max_results=100" if query else "max_results=100"), headers)
    assert answer.refused(), f"{answer.status}: {answer.body[:300]!r}"
    assert b"hostile-base" not in answer.body


@pytest.mark.parametrize("form", list(GOOD))
@pytest.mark.parametrize("route", ROUTE_NAMES)
def test_the_token_is_served_on_every_route_and_never_reaches_mlflow(target, route, form):
    query, headers = GOOD[form](target.token)
    name = unique(f"good-{route}-{form}")
    offset = target.log_size()
    answer = target.raw(
        "POST", path(mlflow_routes(target.stack.mlflow_port)[route], "api/2.0/mlflow/experiments/create", query),
        {**headers, "Content-Type": "application/json"}, json.dumps({"name": name}).encode(),
    )
    assert answer.status == 200, f"{answer.status}: {answer.body[:300]!r}"
    assert target.experiment_exists(name)
    logged = target.mlflow_log_after(offset, unique("marker"))
    assert "experiments/create" in logged, "MLflow's access log did not show the request"
    assert target.token not in logged, f"the token reached MLflow's log: {logged[-500:]}"
    assert target.token not in answer.body.decode(errors="replace")


@pytest.mark.parametrize("route", ROUTE_NAMES)
def test_foreign_origin_is_refused_on_every_spelling_even_with_the_token(target, route):
    """The generic jupyter-server-proxy handler has no origin check: a refusal here proves the
    spelling went through ours."""
    name = unique(f"xorigin-{route}")
    answer = target.raw(
        "POST", path(mlflow_routes(target.stack.mlflow_port)[route], "ajax-api/2.0/mlflow/experiments/create", ""),
        {"Authorization": f"token {target.token}", "Origin": target.attacker_origin, "Content-Type": "text/plain"},
        json.dumps({"name": name}).encode(),
    )
    assert answer.status == 403, f"{answer.status}: {answer.body[:300]!r}"
    assert "access-control-allow-origin" not in answer.headers
    assert not target.experiment_exists(name)


def origins(target) -> dict[str, str]:
    host = f"127.0.0.1:{target.stack.jupyter_port}"
    return {
        "https-same-host-port": f"https://{host}",
        "ws-same-host-port": f"ws://{host}",
        "with-path": f"http://{host}/mlflow/",
        "with-userinfo": f"http://user@{host}",
        "null": "null",
        "other-port": target.attacker_origin,
        "localhost-name": f"http://localhost:{target.stack.jupyter_port}",
        "mlflow-port": f"http://127.0.0.1:{target.stack.mlflow_port}",
    }


@pytest.mark.parametrize("origin", ["https-same-host-port", "ws-same-host-port", "with-path", "with-userinfo", "null",
                                    "other-port", "localhost-name", "mlflow-port"])
def test_origin_that_is_not_exactly_jupyters_is_refused(target, origin):
    name = unique(f"origin-{origin}")
    answer = target.raw(
        "POST", "/mlflow/ajax-api/2.0/mlflow/experiments/create",
        {"Authorization": f"token {target.token}", "Origin": origins(target)[origin], "Content-Type": "application/json"},
        json.dumps({"name": name}).encode(),
    )
    assert answer.status == 403, f"{answer.status}: {answer.body[:300]!r}"
    assert not target.experiment_exists(name)


def test_jupyters_own_origin_is_served(target):
    name = unique("origin-own")
    answer = target.raw(
        "POST", "/mlflow/ajax-api/2.0/mlflow/experiments/create",
        {"Authorization": f"token {target.token}", "Origin": target.origin, "Content-Type": "application/json"},
        json.dumps({"name": name}).encode(),
    )
    assert answer.status == 200, answer.body[:300]
    assert target.experiment_exists(name)
