"""Fixtures for the browser tier: Playwright, a fresh chromium per test, and data to look at."""

from __future__ import annotations

import pytest
from playwright.sync_api import Error as PlaywrightError

from tests.browser.browser import NETWORK_CHANGED, launch
from tests.browser.tracking import DemoRun, make_demo_run


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Call a browser test once more if chromium saw the machine's network change under it.

    Chromium aborts every request in flight with ERR_NETWORK_CHANGED when any interface on the
    machine gains or loses an address (other people's containers come and go on this one), and a
    page whose script chunk was aborted shows "Something went wrong". That is no answer from the
    stack, so such a failure earns one more try with new browsers; any other failure, or a second
    one, stands.
    """
    if pyfuncitem.get_closest_marker("browser") is None:
        return None
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    try:
        pyfuncitem.obj(**arguments)
    except Exception:
        if not getattr(pyfuncitem, "network_changed", False):
            raise
        print(f"\n{pyfuncitem.nodeid}: chromium saw ERR_NETWORK_CHANGED (an interface changed); trying once more")
        pyfuncitem.network_changed = False
        pyfuncitem.obj(**arguments)
    return True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.failed_call = report.failed


@pytest.fixture
def open_browser(request, playwright, tmp_path_factory):
    """open_browser(*chromium_args) -> a BrowserContext on a new chromium with a fresh profile.
    When the test fails, every open page is saved as a screenshot beside the test's tmp files."""
    contexts = []

    def _open(*extra_args: str):
        context = launch(playwright, tmp_path_factory.mktemp("chromium-profile"), *extra_args)

        def _note_network_change(failed_request) -> None:
            if NETWORK_CHANGED in (failed_request.failure or ""):
                request.node.network_changed = True

        context.on("requestfailed", _note_network_change)
        contexts.append(context)
        return context

    yield _open
    if getattr(request.node, "failed_call", False):
        shots = tmp_path_factory.mktemp("failure-screenshots")
        for number, page in enumerate(page for context in contexts for page in context.pages):
            try:
                page.screenshot(path=str(shots / f"page-{number}.png"), timeout=10_000)
            except PlaywrightError as error:  # the page may be gone; the screenshot is only a diagnostic
                print(f"no screenshot of {page.url}: {error}")
        print(f"screenshots of the open pages: {shots}")
    for context in contexts:
        context.close()


@pytest.fixture(scope="session")
def demo_run(shared_stack) -> DemoRun:
    """An experiment with one finished run: params, a stepped metric, a text and an image artifact."""
    return make_demo_run(shared_stack)
