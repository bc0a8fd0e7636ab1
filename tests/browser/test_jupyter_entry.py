"""The ways into MLflow from Jupyter: JupyterLab's launcher tile and Notebook 7's New menu."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.browser import SLOW_MS, dismiss_jupyter_news, log_in, open_in_new_tab, picture

pytestmark = pytest.mark.browser


def expect_mlflow_home(page: Page, mlflow_url: str) -> None:
    expect(page).to_have_url(re.compile(re.escape(mlflow_url)))
    expect(page).to_have_title(re.compile(r"MLflow$"))
    expect(page.get_by_role("link", name="Experiments", exact=True).first).to_be_visible(timeout=SLOW_MS)


def test_lab_login_and_launcher_tile_opens_mlflow(open_browser, shared_stack):
    context = open_browser()
    page = context.new_page()
    log_in(page, shared_stack.base, shared_stack.token, "/lab")

    tile = page.locator(".jp-LauncherCard").filter(has_text="MLflow")
    expect(tile).to_be_visible(timeout=SLOW_MS)
    # The tile shows mlproxy's MLflow icon, loaded from Jupyter (a blank card would have no img).
    icon = tile.get_by_role("img")
    expect(icon).to_have_attribute("src", re.compile(r"/server-proxy/icon/mlflow$"))
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=icon.element_handle())
    dismiss_jupyter_news(page, shared_stack)
    picture(page, "jupyterlab-launcher")

    mlflow = open_in_new_tab(context, tile.click)
    expect_mlflow_home(mlflow, shared_stack.url("mlflow/"))


def test_notebook7_new_menu_opens_mlflow(open_browser, shared_stack):
    context = open_browser()
    page = context.new_page()
    log_in(page, shared_stack.base, shared_stack.token, "/tree")

    page.get_by_role("menuitem", name="New").click()
    entry = page.get_by_role("menuitem", name="MLflow", exact=True)
    expect(entry).to_be_visible()
    picture(page, "notebook7-new-menu")

    mlflow = open_in_new_tab(context, entry.click)
    expect_mlflow_home(mlflow, shared_stack.url("mlflow/"))
