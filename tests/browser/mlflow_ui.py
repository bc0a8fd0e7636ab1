"""What a person does in MLflow's UI, written once and run on any base URL (a route or MLflow itself)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from playwright.sync_api import Page, Response, expect

from tests.browser.browser import SLOW_MS, picture
from tests.browser.tracking import LOSS, DemoRun


def close_assistant(page: Page) -> None:
    """MLflow 3's assistant panel takes a third of the page; a person closes it. MLflow offers it
    only to a page whose hostname is localhost, 127.0.0.1 or ::1."""
    if urlsplit(page.url).hostname not in ("localhost", "127.0.0.1", "::1"):
        return
    question_box = page.get_by_placeholder("Ask a question...")
    question_box.wait_for(timeout=SLOW_MS)
    panel = page.locator("div").filter(has=question_box).filter(has=page.get_by_role("button", name="Close")).last
    panel.get_by_role("button", name="Close").click()
    expect(question_box).to_be_hidden()


def open_experiment(page: Page, base: str, experiment_name: str, assistant: bool = True) -> None:
    """From MLflow's home page to an experiment's runs, by the sidebar and the experiments list.
    assistant: whether MLflow offers its Assistant there (not in team mode, where it is refused)."""
    page.goto(base)
    if assistant:
        close_assistant(page)
    # Classic runs (params, metrics, artifacts) live in the "Model training" view.
    page.get_by_text("Model training", exact=True).click()
    page.get_by_role("link", name="Experiments", exact=True).first.click()
    page.get_by_role("link", name=experiment_name, exact=True).click()
    expect(page).to_have_url(re.compile(r"#/experiments/\d+"))


def rename_experiment(page: Page, new_name: str) -> Response:
    """On an experiment's page, rename it through the header's menu; returns MLflow's answer."""
    page.get_by_role("button", name="Open header dropdown menu").click()
    page.get_by_role("menuitem", name="Edit experiment").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Experiment name").fill(new_name)
    with page.expect_response(lambda response: response.url.endswith("/experiments/update")) as answer:
        dialog.get_by_role("button", name="Save").click()
    expect(dialog).to_be_hidden()
    return answer.value


def tour(page: Page, base: str, demo: DemoRun, pictures: bool = False) -> None:
    """Experiments list, the run's params and metrics, the metric chart, an artifact preview and
    download: each step checks what the page shows."""
    open_experiment(page, base, demo.experiment_name)
    if pictures:
        expect(page.get_by_role("link", name=demo.run_name, exact=True)).to_be_visible()
        picture(page, "mlflow-experiment-runs")

    # The run's overview: its parameters and the metric's last value.
    page.get_by_role("link", name=demo.run_name, exact=True).first.click()
    expect(page).to_have_url(re.compile(rf"/runs/{demo.run_id}"))
    for key, value in demo.params.items():
        row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=key, exact=True))
        expect(row.get_by_role("cell", name=value, exact=True)).to_be_visible()
    loss_row = page.get_by_role("row").filter(has=page.get_by_role("cell", name="loss", exact=True))
    expect(loss_row.get_by_role("cell", name=str(LOSS[-1]), exact=True)).to_be_visible()

    # The metric chart: one plot for "loss" with a point per logged step.
    page.get_by_role("tab", name="Model metrics").click()
    chart = page.get_by_test_id("experiment-view-compare-runs-card").filter(has_text="loss")
    expect(chart.locator(".js-plotly-plot .scatterlayer .point")).to_have_count(len(LOSS), timeout=SLOW_MS)
    if pictures:
        picture(page, "mlflow-run-metric-chart")

    # Artifacts: a text file previewed and downloaded, an image shown.
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("notes.txt", exact=True).first.click()
    expect(page.get_by_text(demo.notes.splitlines()[1])).to_be_visible()
    header = page.locator(".mlflow-artifact-right")
    download_button = header.get_by_role("button").first
    download_button.hover()
    expect(page.get_by_role("tooltip")).to_have_text("Download artifact")
    with page.expect_download() as download_info:
        download_button.click()
    download = download_info.value
    assert download.suggested_filename == "notes.txt"
    with open(download.path(), encoding="utf-8") as handle:
        assert handle.read() == demo.notes
    if pictures:
        picture(page, "mlflow-artifact-preview")

    page.get_by_text("gradient.png", exact=True).first.click()
    image = page.get_by_role("img", name="gradient.png")
    expect(image).to_be_visible()
    page.wait_for_function("image => image.complete && image.naturalWidth > 0", arg=image.element_handle())
    assert image.evaluate("image => [image.naturalWidth, image.naturalHeight]") == [96, 64]
