"""Debian's chromium driven by Playwright, and what a person does with it: log in, watch traffic.

Playwright's own browser download does not work here, so every browser is the system chromium
(`executable_path`), headless, on a fresh profile of its own.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import BrowserContext, Locator, Page, Playwright, Request, Response, expect

from tests.stack import ROOT, Stack

CHROMIUM = shutil.which("chromium")
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
# Pictures for docs/ and the README, rewritten by every run of the browser tests.
IMAGES = ROOT / "docs" / "images"
# A cold JupyterLab or MLflow page, or a kernel's first import of mlflow, can take a while on 2 cores.
SLOW_MS = 90_000
# What chromium fails every request in flight with when any interface on the machine changes.
NETWORK_CHANGED = "net::ERR_NETWORK_CHANGED"


def launch(playwright: Playwright, profile: Path, *extra_args: str) -> BrowserContext:
    """A new chromium process on a fresh profile directory, as a person's first visit."""
    context = playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=CHROMIUM,
        headless=True,
        args=[*FLAGS, *extra_args],
        viewport=VIEWPORT,
        accept_downloads=True,
    )
    context.set_default_timeout(30_000)
    expect.set_options(timeout=30_000)
    return context


def log_in(page: Page, base: str, token: str, next_path: str) -> None:
    """Jupyter's login page, the way a person uses it: open a page, get the form, paste the token."""
    page.goto(f"{base}{next_path}")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.get_by_label("Password or token:").fill(token)
    page.get_by_role("button", name="Log in", exact=True).click()
    expect(page).to_have_url(re.compile(re.escape(f"{base}{next_path.split('#')[0]}")))
    page.wait_for_load_state("load")


def open_in_new_tab(context: BrowserContext, click) -> Page:
    """What a click opens in a new tab (MLflow's launcher entry has new_browser_tab)."""
    with context.expect_page() as opened:
        click()
    page = opened.value
    page.wait_for_load_state()
    return page


def picture(target: Page | Locator, name: str) -> Path:
    """Save a screenshot of a page or one element for the docs, as docs/images/<name>.png."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES / f"{name}.png"
    target.screenshot(path=str(path))
    return path


NEWS_SETTINGS = "lab/api/settings/@jupyterlab/apputils-extension:notification"


def dismiss_jupyter_news(page: Page, stack: Stack) -> None:
    """JupyterLab asks once per server whether to fetch news (until a user answers, the setting is
    "none"); a person answers No."""
    answer = stack.session().get(stack.url(NEWS_SETTINGS), timeout=10)
    answer.raise_for_status()
    if answer.json()["settings"].get("fetchNews", "none") != "none":
        return  # answered already on this server
    question = page.get_by_text("Would you like to get notified about official Jupyter news?")
    question.wait_for(timeout=SLOW_MS)
    page.get_by_role("button", name="No", exact=True).click()
    expect(question).to_be_hidden()


@dataclass
class Traffic:
    """Every request a browser context makes, and every failed or >= 400 answer it gets."""

    requests: list[tuple[str, str]] = field(default_factory=list)
    errors: list[tuple[str, str, str]] = field(default_factory=list)  # (method, url, status or failure)

    @classmethod
    def watch(cls, context: BrowserContext) -> Traffic:
        traffic = cls()
        context.on("request", traffic._on_request)
        context.on("response", traffic._on_response)
        context.on("requestfailed", traffic._on_failed)
        return traffic

    def _on_request(self, request: Request) -> None:
        self.requests.append((request.method, request.url))

    def _on_response(self, response: Response) -> None:
        if response.status >= 400:
            self.errors.append((response.request.method, response.url, str(response.status)))

    def _on_failed(self, request: Request) -> None:
        failure = request.failure or "failed"
        if "ERR_ABORTED" in failure:
            # The browser cancelled it (the page navigated on, a download took over, a poll was
            # superseded): not an answer from the server, which shows as a status or a reset.
            return
        self.errors.append((request.method, request.url, failure))

    def outside(self, prefix: str) -> list[str]:
        """Requests that went anywhere but under prefix (data: and blob: URLs stay in the page)."""
        return [
            f"{method} {url}"
            for method, url in self.requests
            if not url.startswith(prefix) and urlsplit(url).scheme in ("http", "https", "ws", "wss")
        ]

    def errors_under(self, prefix: str) -> set[tuple[str, str, str]]:
        """The failures under prefix as (method, path below the prefix, status), query dropped."""
        return {
            (method, urlsplit(url[len(prefix) :]).path, status)
            for method, url, status in self.errors
            if url.startswith(prefix)
        }
