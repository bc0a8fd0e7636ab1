"""`mlproxy status` on the running stack, drawn as a terminal for the docs by the same chromium."""

from __future__ import annotations

import html

import pytest
from playwright.sync_api import expect

from tests.browser.browser import picture

pytestmark = pytest.mark.browser

TERMINAL = """<!doctype html>
<style>
  body {{ margin: 0; background: #fff; }}
  #terminal {{ display: inline-block; margin: 12px; padding: 14px 18px; border-radius: 8px;
              background: #1e1e1e; color: #e6e6e6; font: 14px/1.45 "DejaVu Sans Mono", monospace; }}
  #terminal pre {{ margin: 0; font: inherit; }}
  .prompt {{ color: #8ae234; }}
</style>
<div id="terminal"><pre><span class="prompt">$</span> mlproxy status
{output}</pre></div>
"""


def test_status_output_picture(open_browser, shared_stack):
    result = shared_stack.mlproxy("status")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("mlproxy: ready"), result.stdout
    page = open_browser().new_page()
    page.set_content(TERMINAL.format(output=html.escape(result.stdout.rstrip())))
    terminal = page.locator("#terminal")
    expect(terminal).to_contain_text("SERVICE")
    for line in result.stdout.strip().splitlines():
        expect(terminal).to_contain_text(line.strip())
    picture(terminal, "mlproxy-status")
