"""Shared fixtures: one running stack for the tests that only read, and the CI skip rule."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import Stack, port_is_free
from tests.support.hostile import Target

IN_CI = os.environ.get("CI") == "true"


def session_stack(state_dir: Path, what: str) -> Iterator[Stack]:
    """A session fixture's stack: started on its ports once they are seen free, stopped at the end,
    and its ports free again after it."""
    stack = Stack(state_dir)
    busy = [port for port in stack.ports.values() if not port_is_free(port)]
    if busy:
        pytest.fail(f"ports {busy} of the {what} are in use; stop whatever holds them")
    stack.start()
    yield stack
    assert stack.stop() == 0
    busy = [port for port in stack.ports.values() if not port_is_free(port)]
    assert not busy, f"ports {busy} still in use after the {what} stopped"


@pytest.fixture(scope="session")
def shared_stack(tmp_path_factory):
    """One stack, started once; tests using it only read or add their own experiments."""
    yield from session_stack(tmp_path_factory.mktemp("shared") / "state", "shared stack")


@pytest.fixture(scope="session")
def hostile_stack():
    """One real stack for the hostile and protocol-fuzz tiers. Its state directory sits in a
    world-traversable directory, so the file-mode cases test the stack's own modes (pytest's tmp
    directories are 0700 and would hide every file anyway)."""
    parent = Path(tempfile.mkdtemp(prefix="mlproxy-hostile-"))
    parent.chmod(0o755)  # other users may walk in: what they find is the stack's own modes
    try:
        yield from session_stack(parent / "state", "hostile stack")
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="session")
def target(hostile_stack) -> Target:
    return Target(hostile_stack)


@pytest.fixture(scope="session")
def playwright():
    """One Playwright driver for the whole run: the browser and hostile tiers both drive chromium,
    and a second sync_playwright() inside the first one's event loop is refused."""
    from tests.browser.browser import CHROMIUM

    if CHROMIUM is None:
        # A skip is a failure when CI=true (below).
        pytest.skip("no chromium on PATH: `apt-get install chromium` (Debian's package) to run the browser tiers")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    counts = {key: len(terminalreporter.stats.get(key, [])) for key in ("passed", "failed", "error", "skipped")}
    terminalreporter.write_line(
        f"mlproxy tests: {counts['passed']} passed, {counts['failed'] + counts['error']} failed, {counts['skipped']} skipped"
    )
    if IN_CI and counts["skipped"]:
        terminalreporter.write_line("CI=true: a skipped test is a failure (every tier must run in CI)", red=True)


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if IN_CI and reporter is not None and reporter.stats.get("skipped") and session.exitstatus == 0:
        session.exitstatus = 1
