"""Team mode in a real browser (Debian's chromium): alice logs in at the Hub, JupyterLab's MLflow tile
in her server opens the shared MLflow behind the Hub's login, and MLflow's UI writes; a page on
another port, in the same logged-in browser, cannot."""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import expect

from tests.browser.browser import SLOW_MS, launch, open_in_new_tab
from tests.browser.mlflow_ui import open_experiment, rename_experiment
from tests.support.other_origin import OtherOrigin

pytestmark = pytest.mark.team

ATTACK = """<!doctype html><title>another site</title><script>
window.attack = async ([target, name]) => {
  try {
    const answer = await fetch(target + "ajax-api/2.0/mlflow/experiments/create", {
      method: "POST", credentials: "include",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify({name: name}),
    });
    return "status " + answer.status;
  } catch (error) { return "error: " + error; }
};
</script>"""


def experiment(team, user: str, name: str) -> dict | None:
    answer = team.client(user).get(team.api("api/2.0/mlflow/experiments/get-by-name"), params={"experiment_name": name}, timeout=60)
    return answer.json()["experiment"] if answer.status_code == 200 else None


@pytest.fixture
def browser(playwright, tmp_path):
    context = launch(playwright, tmp_path / "chromium-profile")
    yield context
    context.close()


def log_in_at_the_hub(page, team, user: str) -> None:
    page.goto(team.hub.url("hub/login"))
    with team.hub.logging_in(user) as password:
        page.get_by_label("Username").fill(user)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        expect(page).not_to_have_url(re.compile(r"/hub/login"), timeout=SLOW_MS)


def test_the_lab_tile_opens_mlflow_behind_the_hubs_login_and_the_ui_writes(team, browser):
    team.hub.spawn("alice")
    old, new = f"alice-ui-{uuid.uuid4().hex[:6]}", f"renamed-{uuid.uuid4().hex[:6]}"
    created = team.client("alice").post(team.api("api/2.0/mlflow/experiments/create"), json={"name": old}, timeout=60)
    assert created.status_code == 200, created.text
    page = browser.new_page()
    log_in_at_the_hub(page, team, "alice")
    page.goto(team.hub.url("user/alice/lab"))
    tile = page.locator(".jp-LauncherCard").filter(has_text="MLflow")
    expect(tile).to_be_visible(timeout=SLOW_MS)

    mlflow = open_in_new_tab(browser, tile.click)
    # /user/alice/mlflow/ -> /services/mlflow/ -> the Hub's OAuth (alice is logged in) -> MLflow.
    expect(mlflow).to_have_url(re.compile(re.escape(team.url)), timeout=SLOW_MS)
    expect(mlflow.get_by_role("link", name="Experiments", exact=True).first).to_be_visible(timeout=SLOW_MS)

    open_experiment(mlflow, team.url, old, assistant=False)
    answer = rename_experiment(mlflow, new)
    assert answer.status == 200, answer.text()
    assert experiment(team, "alice", new) is not None and experiment(team, "alice", old) is None


def test_a_page_on_another_port_cannot_write_with_alices_login(team, browser):
    page = browser.new_page()
    log_in_at_the_hub(page, team, "alice")
    page.goto(team.url)  # alice has the service's login cookie now
    expect(page.get_by_role("link", name="Experiments", exact=True).first).to_be_visible(timeout=SLOW_MS)
    # The same request from MLflow's own page succeeds: the refusal below is about the origin.
    control = f"control-{uuid.uuid4().hex[:6]}"
    same_origin = page.evaluate(ATTACK_CALL, [team.url, control])
    assert same_origin == "status 200", same_origin

    name = f"cross-origin-{uuid.uuid4().hex[:6]}"
    with OtherOrigin() as site:
        attacker = browser.new_page()
        attacker.goto(site.serve(ATTACK))
        outcome = attacker.evaluate("args => window.attack(args)", [team.url, name])
    assert outcome != "status 200", outcome
    assert experiment(team, "carol", name) is None, "the cross-origin write created the experiment"
    assert experiment(team, "carol", control) is not None


ATTACK_CALL = """async ([target, name]) => {
  const answer = await fetch(target + "ajax-api/2.0/mlflow/experiments/create", {
    method: "POST", credentials: "include", headers: {"Content-Type": "application/json"}, body: JSON.stringify({name: name}),
  });
  return "status " + answer.status;
}"""
