"""Team mode's attribution audit stays true to the installed MLflow: every write route MLflow serves
is in docs/team-attribution.md, the document lists no route MLflow lacks, and what the middlewares
enforce is what the document says. (Their behaviour on a real MLflow: tests/integration/test_attribution.py.)"""

from __future__ import annotations

import re

import pytest

from mlproxy_supervisor.hub import caller, identity
from mlproxy_supervisor.hub.attribution import ROUTES, hub_user, names_user
from tests.stack import ROOT

DOCUMENT = ROOT / "docs" / "team-attribution.md"
READS = {"GET", "HEAD", "OPTIONS"}
ENFORCED = ("**stamped**", "**refused**")


def under_api(path: str) -> str:
    """MLflow serves its REST routes under /api/ and /ajax-api/ alike; the document writes /api/."""
    return re.sub(r"^/ajax-api/", "/api/", path)


def documented() -> dict[tuple[str, str], str]:
    """(method, path under /api/) -> the document's verdict, from its route tables."""
    verdicts = {}
    for line in DOCUMENT.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) != 4 or cells[0] in ("Method", "---", "all"):
            continue
        for path in re.findall(r"`(/[^`]*)`", cells[1]):
            for method in cells[0].split(", "):
                verdicts[(method, under_api(path))] = cells[3]
    return verdicts


def _native_routes(routes, prefix: str = ""):
    for route in routes:
        if (included := getattr(route, "include_context", None)) is not None:
            yield from _native_routes(included.included_router.routes, prefix + included.prefix)
        elif hasattr(route, "endpoint") and getattr(route, "methods", None):
            yield prefix + route.path, route.methods


@pytest.fixture(scope="module")
def served() -> set[tuple[str, str]]:
    """The write routes of the installed MLflow (method, path under /api/): Flask's and the native
    FastAPI ones."""
    from mlflow.server.fastapi_app import app, flask_app

    rules = [(rule.rule, rule.methods) for rule in flask_app.url_map.iter_rules()]
    return {(method, under_api(path)) for path, methods in [*rules, *_native_routes(app.routes)] for method in methods - READS}


def test_every_write_route_mlflow_serves_is_in_the_document(served):
    missing = served - documented().keys()
    assert not missing, f"audit these routes and add them to {DOCUMENT.name}: {sorted(missing)}"


def test_the_document_lists_only_routes_mlflow_serves(served):
    stale = documented().keys() - served
    assert not stale, f"MLflow no longer serves these: {sorted(stale)}"


def test_what_the_middlewares_enforce_is_what_the_document_says():
    from mlflow.tracing.utils.otlp import OTLP_TRACES_PATH

    verdicts = documented()
    for route in ROUTES:
        assert verdicts[(route.method, under_api(route.path))].startswith(ENFORCED[0] if route.stamps else ENFORCED[1]), route
    enforced = {(route.method, under_api(route.path)) for route in ROUTES} | {("POST", OTLP_TRACES_PATH)}
    assert {key for key, verdict in verdicts.items() if verdict.startswith(ENFORCED)} == enforced


def test_each_enforced_route_exists_under_its_exact_path():
    """under_api() folds /ajax-api/ into /api/: check each prefix the table names is served."""
    from mlflow.server import app as flask_app

    rules = {(method, rule.rule) for rule in flask_app.url_map.iter_rules() for method in rule.methods}
    assert [route for route in ROUTES if (route.method, route.path) not in rules] == []


def test_graphql_only_reads():
    """The document's verdict on /graphql: its mutations are searches and an echo."""
    from mlflow.server.graphql.graphql_schema_extensions import schema

    assert set(schema.graphql_schema.mutation_type.fields) == {"mlflowSearchRuns", "mlflowSearchDatasets", "testMutation"}


@pytest.mark.parametrize("key", ["mlflow.user", "MLFLOW.USER", " MLflow.User\t"])
def test_a_key_names_the_user_whatever_its_case_and_spaces(key):
    assert names_user(key)


@pytest.mark.parametrize("key", ["mlflow.users", "mlflow.trace.user", "mlflow_user", None, ["mlflow.user"]])
def test_other_keys_do_not(key):
    assert not names_user(key)


def test_the_user_is_read_as_mlflows_auth_app_is_told_it(monkeypatch):
    """As hub/identity.py reads the headers: the name the service proved, decoded; no proof, or a
    name folded from two headers, names no one."""
    monkeypatch.setenv(identity.SECRET_ENV, "a-secret-of-this-test")
    for name in ("alice", "zoë", "bob,alice", "名前"):
        assert hub_user(caller.headers(name, False, "a-secret-of-this-test").get) == name
    assert hub_user(caller.headers("alice", False, "another-secret").get) is None
    assert hub_user({"X-MLproxy-User": "alice"}.get) is None and hub_user({}.get) is None
    joined = {**caller.headers("bob", False, "a-secret-of-this-test")}
    joined["X-MLproxy-User"] = "alice," + joined["X-MLproxy-User"]
    assert hub_user(joined.get) is None
