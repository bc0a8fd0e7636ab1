"""A page from another origin cannot write to MLflow through Jupyter with the user's login cookie.

The page is served from 127.0.0.1 on another port: the same *site* as Jupyter, so chromium sends
Jupyter's login cookie with its requests, and MLflow alone trusts any localhost Origin. In the same
browser where the user is logged in, it tries the three ways a page can: a no-preflight text/plain
fetch, a JSON fetch (preflighted) and a form post. A write from Jupyter's own page, in the same
browser, succeeds: the refusals are about the origin, not a missing login.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.browser.browser import log_in
from tests.browser.tracking import experiment_exists
from tests.support.other_origin import OtherOrigin

pytestmark = pytest.mark.browser

ATTACK_PAGE = """<!doctype html>
<title>Some other site</title>
<form id="form" method="POST" enctype="text/plain" target="sink"
      action="{target}api/2.0/mlflow/experiments/create">
  <input name='{{"name": "{form_name}", "ignored": "' value='"}}'>
</form>
<iframe name="sink"></iframe>
<script>
window.attack = async ([target, simpleName, jsonName]) => {{
  const results = {{}};
  try {{
    await fetch(target + "ajax-api/2.0/mlflow/experiments/create", {{
      method: "POST", mode: "no-cors", credentials: "include",
      headers: {{"Content-Type": "text/plain"}}, body: JSON.stringify({{name: simpleName}}),
    }});
    results.simple = "sent";
  }} catch (error) {{ results.simple = "error: " + error; }}
  try {{
    const answer = await fetch(target + "ajax-api/2.0/mlflow/experiments/create", {{
      method: "POST", credentials: "include",
      headers: {{"Content-Type": "application/json"}}, body: JSON.stringify({{name: jsonName}}),
    }});
    results.json = "status " + answer.status;
  }} catch (error) {{ results.json = "error: " + error; }}
  return results;
}};
</script>
"""


def wait_for_log(log: Path, start: int, lines: list[str], timeout: float = 15) -> str:
    """The log from offset start, once it holds every line or timeout seconds have passed
    (supervisord writes Jupyter's output to the file a moment after Jupyter answered)."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace")[start:]
        if all(line in text for line in lines) or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


@pytest.fixture
def other_origin():
    """Pages on http://127.0.0.1:<another port>: other_origin.serve(html) -> the page's URL."""
    with OtherOrigin() as site:
        yield site


@pytest.mark.parametrize("route", ["mlflow", "proxy"])
def test_other_origin_cannot_write_with_the_login_cookie(open_browser, shared_stack, other_origin, route):
    prefix = f"{shared_stack.base}/{'mlflow' if route == 'mlflow' else f'proxy/{shared_stack.mlflow_port}'}/"
    context = open_browser()
    page = context.new_page()
    log_in(page, shared_stack.base, shared_stack.token, prefix.removeprefix(shared_stack.base))

    # Control: Jupyter's own page, same browser, same cookie, writes fine.
    own_name = f"own-origin-{uuid.uuid4().hex[:6]}"
    status = page.evaluate(
        """async ([url, name]) => (await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                                     body: JSON.stringify({name})})).status""",
        [f"{prefix}ajax-api/2.0/mlflow/experiments/create", own_name],
    )
    assert status == 200 and experiment_exists(shared_stack, own_name)

    jupyter_log = shared_stack.state_dir / "logs" / "jupyter.log"
    log_start = len(jupyter_log.read_text(errors="replace"))
    names = {kind: f"csrf-{kind}-{uuid.uuid4().hex[:6]}" for kind in ("simple", "json", "form")}
    attacker = context.new_page()
    attacker.goto(other_origin.serve(ATTACK_PAGE.format(target=prefix, form_name=names["form"])))
    writes = []
    attacker.on("response", lambda response: writes.append(response) if response.request.method == "POST" else None)

    results = attacker.evaluate("attack", [prefix, names["simple"], names["json"]])
    assert results["simple"] == "sent", results  # no-cors: the browser sends it, the page sees nothing
    assert results["json"].startswith("error"), results  # the preflight fails, the POST is never sent
    with attacker.expect_response(
        lambda response: response.request.method == "POST" and "/api/2.0/" in response.url
    ) as form_answer:
        attacker.locator("#form").evaluate("form => form.submit()")
    assert form_answer.value.status == 403

    # Both writes that left the browser were refused with 403. The handler logs its refusal only
    # after Jupyter authenticated the request: so the login cookie went along, and only the
    # origin check stopped the write.
    sent = {response.url.removeprefix(prefix): response for response in writes}
    assert set(sent) == {"ajax-api/2.0/mlflow/experiments/create", "api/2.0/mlflow/experiments/create"}, list(sent)
    for response in sent.values():
        assert response.status == 403, f"{response.url}: {response.status}"
    refusals = [f"Refused cross-origin POST {urlsplit(prefix).path}{path} from {other_origin.origin}" for path in sent]
    server_log = wait_for_log(jupyter_log, log_start, refusals)
    missing = [line for line in refusals if line not in server_log]
    assert not missing, f"no authenticated refusal in jupyter.log for {missing}:\n{server_log[-3000:]}"
    for kind, name in names.items():
        assert not experiment_exists(shared_stack, name), f"the {kind} cross-origin write created {name}"
