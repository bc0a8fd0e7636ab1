"""Jupyter reached by a name other than localhost: MLflow's pages load and its UI can write.

MLflow refuses a Host that is not local and a write whose Origin is not local; mlproxy's handler
checks the Origin against Jupyter's own host and presents the request to MLflow as a loopback one.
Chromium's --host-resolver-rules gives the name without touching the machine's resolver.
"""

from __future__ import annotations

import uuid

import pytest
from playwright.sync_api import expect

from tests.browser.browser import Traffic, log_in
from tests.browser.mlflow_ui import open_experiment, rename_experiment
from tests.browser.tracking import create_experiment, experiment_name

pytestmark = pytest.mark.browser

HOST = "myvm.example.com"


def test_pages_load_and_renaming_an_experiment_works(open_browser, shared_stack):
    old_name, new_name = f"hostname-{uuid.uuid4().hex[:6]}", f"renamed-{uuid.uuid4().hex[:6]}"
    experiment_id = create_experiment(shared_stack, old_name)
    base = f"http://{HOST}:{shared_stack.jupyter_port}"
    context = open_browser(f"--host-resolver-rules=MAP {HOST} 127.0.0.1")
    traffic = Traffic.watch(context)
    page = context.new_page()
    log_in(page, base, shared_stack.token, "/mlflow/")
    open_experiment(page, f"{base}/mlflow/", old_name)

    answer = rename_experiment(page, new_name)
    assert answer.status == 200, answer.text()
    assert answer.request.header_value("origin") == base
    expect(page.get_by_text(new_name).first).to_be_visible()

    assert experiment_name(shared_stack, experiment_id) == new_name
    assert not traffic.outside(base + "/"), f"requests left {base}: {traffic.outside(base + '/')}"
    refused = [error for error in traffic.errors if error[2] == "403" or error[2].startswith("5")]
    assert not refused, f"refused or failed by {HOST}: {refused}"
