"""A notebook made and run in JupyterLab logs a run that MLflow's UI, opened from the launcher, shows.

No setup in the notebook: mlproxy gives the kernel MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import expect

from tests.browser.browser import SLOW_MS, dismiss_jupyter_news, log_in, open_in_new_tab, picture
from tests.browser.mlflow_ui import open_experiment

pytestmark = pytest.mark.browser

CELL = """import mlflow

mlflow.set_experiment("{experiment}")
with mlflow.start_run(run_name="first-notebook-run") as run:
    mlflow.log_param("model", "logistic-regression")
    mlflow.log_metric("accuracy", 0.93)
print("logged run", run.info.run_id)
"""


@pytest.fixture
def kernels_started_here(shared_stack):
    """Shuts down the kernels of the sessions a test opened."""
    session = shared_stack.session()
    before = {item["id"] for item in session.get(shared_stack.url("api/sessions"), timeout=10).json()}
    yield
    for item in session.get(shared_stack.url("api/sessions"), timeout=10).json():
        if item["id"] not in before:
            session.delete(shared_stack.url(f"api/sessions/{item['id']}"), timeout=30)


def test_notebook_cell_logs_a_run_the_mlflow_ui_shows(open_browser, shared_stack, kernels_started_here):
    experiment = f"notebook-ui-{uuid.uuid4().hex[:6]}"
    context = open_browser()
    page = context.new_page()
    log_in(page, shared_stack.base, shared_stack.token, "/lab")
    dismiss_jupyter_news(page, shared_stack)

    # A new notebook from the launcher, the cell pasted in, run with Shift+Enter.
    page.locator(".jp-LauncherCard").filter(has_text="Python 3").first.click()
    editor = page.locator(".jp-Notebook .jp-Cell .cm-content").first
    expect(editor).to_be_visible(timeout=SLOW_MS)
    # As a person does, wait for the kernel to be up (the status bar says Idle) before running.
    expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=SLOW_MS)
    editor.click()
    page.keyboard.insert_text(CELL.format(experiment=experiment))
    page.keyboard.press("Shift+Enter")
    output = page.locator(".jp-OutputArea-output").filter(has_text="logged run")
    expect(output).to_be_visible(timeout=SLOW_MS)
    run_id = re.search(r"logged run ([0-9a-f]{32})", output.inner_text()).group(1)
    picture(page, "notebook-logs-a-run")

    # MLflow from a new launcher's tile, then the experiment and the run, as a person finds them.
    page.get_by_role("menuitem", name="File").click()
    page.get_by_role("menuitem", name="New Launcher").click()
    tile = page.locator(".jp-LauncherCard").filter(has_text="MLflow")
    mlflow = open_in_new_tab(context, tile.click)
    open_experiment(mlflow, shared_stack.url("mlflow/"), experiment)
    mlflow.get_by_role("link", name="first-notebook-run", exact=True).first.click()
    expect(mlflow).to_have_url(re.compile(rf"/runs/{run_id}"))
    accuracy = mlflow.get_by_role("row").filter(has=mlflow.get_by_role("cell", name="accuracy", exact=True))
    expect(accuracy.get_by_role("cell", name="0.93", exact=True)).to_be_visible()
    model = mlflow.get_by_role("row").filter(has=mlflow.get_by_role("cell", name="model", exact=True))
    expect(model.get_by_role("cell", name="logistic-regression", exact=True)).to_be_visible()
    picture(mlflow, "mlflow-run-from-notebook")
