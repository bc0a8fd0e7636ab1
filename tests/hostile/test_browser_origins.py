"""Cross-origin writes from a real chromium page on another local port, where the user is logged
in to Jupyter: every MLflow write endpoint, through every spelling of the route, with and
without a preflight. chromium attaches Jupyter's cookie (same site); every write must be refused
and leave nothing behind.

MLflow's own listener, which trusts any localhost Origin, is a unix socket such a page cannot
reach at all: test_mlflow_listener.py.
"""

from __future__ import annotations

import json

import pytest

from tests.browser.browser import launch, log_in
from tests.support.hostile import ROUTE_NAMES, mlflow_routes, unique
from tests.support.other_origin import OtherOrigin

pytestmark = [pytest.mark.hostile, pytest.mark.browser]

# (name, method, endpoint below the route, body kind); {name} and {artifact} are filled per case.
ENDPOINTS = [
    ("rest-create", "POST", "api/2.0/mlflow/experiments/create", "create"),
    ("ajax-create", "POST", "ajax-api/2.0/mlflow/experiments/create", "create"),
    ("ajax-delete-experiment", "POST", "ajax-api/2.0/mlflow/experiments/delete", "delete"),
    ("graphql", "POST", "graphql", "graphql"),
    ("upload-artifact", "POST", "ajax-api/2.0/mlflow/upload-artifact?run_uuid={run}&path={name}", "file"),
    ("artifact-put", "PUT", "api/2.0/mlflow-artifacts/artifacts/{artifact}", "file"),
    ("artifact-delete", "DELETE", "api/2.0/mlflow-artifacts/artifacts/{victim}", "none"),
]
SIMPLE_METHODS = {"POST"}  # what a page may send with mode: no-cors, without a preflight
CASES = [(route, endpoint[0], mode) for route in ROUTE_NAMES for endpoint in ENDPOINTS
         for mode in ("simple", "preflight") if mode == "preflight" or endpoint[1] in SIMPLE_METHODS]

ATTACK = """
window.attack = async (cases) => {
  const results = {};
  for (const c of cases) {
    const init = {method: c.method, credentials: "include", body: c.body === null ? undefined : c.body};
    if (c.mode === "simple") { init.mode = "no-cors"; init.headers = {"Content-Type": "text/plain"}; }
    else { init.headers = {"Content-Type": "application/json", "X-Requested-With": "XMLHttpRequest"}; }
    try { const answer = await fetch(c.url, init); results[c.id] = "status " + answer.status; }
    catch (error) { results[c.id] = "error " + error; }
  }
  return results;
};
"""


def attacker_site(port: int) -> OtherOrigin:
    """http://127.0.0.1:<port>/: the page that attacks, on another port (Target.attacker_origin_port)."""
    site = OtherOrigin(port)
    site.url = site.serve(f"<!doctype html><title>another site</title><script>{ATTACK}</script>", "/")
    return site


@pytest.fixture(scope="module")
def attack(target, playwright, tmp_path_factory):
    """Every case run once from one logged-in chromium; what each left behind is checked per test."""
    victims = {}
    cases = []
    for route, endpoint_name, mode in CASES:
        case_id = unique(f"{route}-{endpoint_name}-{mode}")
        _, method, endpoint, body_kind = next(e for e in ENDPOINTS if e[0] == endpoint_name)
        name = f"{case_id}.txt"
        body = None
        if body_kind == "create":
            body = json.dumps({"name": case_id})
        elif body_kind == "delete":
            victims[case_id] = target.create_experiment(f"victim-{case_id}")
            body = json.dumps({"experiment_id": victims[case_id]})
        elif body_kind == "graphql":
            query = f'query {{ mlflowSearchRuns(input: {{experimentIds: ["{target.experiment_id}"]}}) {{ runs {{ info {{ runId }} }} }} }}'
            body = json.dumps({"query": query})
        elif body_kind == "file":
            body = "written by another site"
        if body_kind == "none":
            victims[case_id] = f"victim-{case_id}.txt"
            target.put_artifact(victims[case_id])
        url = mlflow_routes(target.stack.mlflow_port)[route] + endpoint.format(
            run=target.run_id, name=name, artifact=target.artifact_path(name),
            victim=target.artifact_path(victims.get(case_id, "")),
        )
        url += ("&" if "?" in url else "?") + f"case={case_id}"
        cases.append({"id": case_id, "key": (route, endpoint_name, mode), "method": method, "mode": mode,
                      "url": target.origin + url, "body": body})

    site = attacker_site(target.attacker_origin_port)
    seen: dict[str, list[int]] = {}
    try:
        context = launch(playwright, tmp_path_factory.mktemp("hostile-chromium"))
        try:
            page = context.new_page()
            log_in(page, target.origin, target.token, "/mlflow/")
            attacker = context.new_page()

            def note(response):
                for case in cases:
                    if f"case={case['id']}" in response.url:
                        seen.setdefault(case["id"], []).append(response.status)

            attacker.on("response", note)
            attacker.goto(site.url)
            results = attacker.evaluate("attack", cases)
            page.wait_for_timeout(500)  # responses already arrived; let the events drain
        finally:
            context.close()
    finally:
        site.close()
    return {case["key"]: (case, results[case["id"]], seen.get(case["id"], []), victims.get(case["id"])) for case in cases}


@pytest.mark.parametrize(("route", "endpoint", "mode"), CASES)
def test_cross_origin_write_is_refused_and_changes_nothing(target, attack, route, endpoint, mode):
    case, result, statuses, victim = attack[(route, endpoint, mode)]
    # What reached the server was refused; a preflighted request never left the browser (its
    # preflight has no cookie, so Jupyter refuses it), and a page reading any answer sees none.
    assert all(status == 403 for status in statuses), f"{case['url']}: {statuses}"
    if mode == "simple":
        assert statuses == [403], f"{case['url']}: chromium sent it, and the answer must be a refusal ({statuses})"
    else:
        assert result.startswith("error"), f"{case['url']}: the page read an answer: {result}"
    assert not target.experiment_exists(case["id"])
    written = [path for path in target.files_named(case["id"]) if not path.name.startswith("victim-")]
    assert not written, f"an artifact was written: {written}"
    if endpoint == "ajax-delete-experiment":
        assert target.experiment_exists(f"victim-{case['id']}"), "the experiment was deleted"
    if endpoint == "artifact-delete":
        assert target.files_named(victim), "the artifact was deleted"
